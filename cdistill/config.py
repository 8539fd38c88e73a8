"""Checks on a composed config that fail fast, before minutes of model building, with one clear line."""

from __future__ import annotations

import math

from cdistill.methods import METHODS, build_method
from cdistill.objectives import COSTS, KINDS
from cdistill.objectives.advantages import BASELINES, SCALES


class ConfigError(ValueError):
    pass


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):  # a NaN compares false with everything and would pass every range check
        raise ConfigError(f"{key} must be a finite number, got {value}")
    return float(value)


def _count(section, name: str, keys: tuple[str, ...]) -> None:
    """Whole numbers of at least 1 (problems, samples, batch sizes)."""
    for key in keys:
        v = section[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}.{key} must be a whole number of at least 1, got {v!r}")


def _positive(section, name: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if _number(section[key], f"{name}.{key}") <= 0:
            raise ConfigError(f"{name}.{key} must be positive, got {section[key]}")


def validate(cfg, command: str = "train") -> None:
    """Refuse a config that cannot run, in one line. ``command="eval"`` leaves out what evaluating a trained
    student does not use: the base model paths (it loads the run's student/) and the rollout engine."""
    if cfg.method.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.method.name!r}; available: {', '.join(sorted(METHODS))}")
    c = cfg.constraint
    if c.cost not in COSTS:
        raise ConfigError(f"unknown constraint.cost {c.cost!r}; expected one of {', '.join(COSTS)}")
    if c.kind not in KINDS:
        raise ConfigError(f"unknown constraint.kind {c.kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(c.get("pathwise_gradient", True), bool):
        raise ConfigError(f"constraint.pathwise_gradient must be true or false, got {c.pathwise_gradient!r}")
    if _number(c.threshold, "constraint.threshold") <= 0:  # every cost is a divergence: d ≤ 0 is infeasible
        raise ConfigError(f"constraint.threshold must be positive, got {c.threshold}")
    _positive(cfg.rollout, "rollout", ("max_new_tokens", "prompts_per_step", "samples_per_prompt", "temperature"))
    if not 0 < _number(cfg.rollout.top_p, "rollout.top_p") <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}")
    _count(cfg.eval, "eval", ("n_problems", "samples", "batch_size"))
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError(f"seed must be a whole number, got {cfg.seed!r}")
    _device(cfg.device)
    _positive(cfg.optim, "optim", ("steps", "inner_epochs", "micro_batch", "lr"))
    _positive(cfg.scoring, "scoring", ("chunk", "micro_batch"))
    o = cfg.optim
    if o.adv_scale not in SCALES:
        raise ConfigError(f"unknown optim.adv_scale {o.adv_scale!r}; expected one of {', '.join(SCALES)}")
    if o.adv_baseline not in BASELINES:
        raise ConfigError(f"unknown optim.adv_baseline {o.adv_baseline!r}; expected one of {', '.join(BASELINES)}")
    if o.schedule not in ("constant", "cosine"):
        raise ConfigError(f"unknown optim.schedule {o.schedule!r}; expected constant or cosine")
    try:  # each method checks its own options (and weakest_link its constraint)
        method = build_method(cfg.method, cfg.constraint, cfg.optim)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if method.group_relative and o.adv_baseline == "group" and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError(f"rollout.samples_per_prompt={cfg.rollout.samples_per_prompt} with {method.name}: each "
                          "completion is its group's own baseline, so its task reward cancels out of every advantage "
                          "and is never learned from; use at least 2 (or optim.adv_baseline=none)")
    if command == "eval":
        return
    _rollout_backend(cfg.rollout, method)
    for role in ("student", "teacher"):
        _model_address(cfg.model[role].name_or_path, f"model.{role}.name_or_path")
    q = cfg.model.teacher.get("quantization")
    if q:
        from cdistill.models.loading import ModelError, quantization_config

        try:
            quantization_config(q, None)
        except ModelError as e:
            raise ConfigError(f"model.teacher.quantization: {e}") from None


def _model_address(name, key: str) -> None:
    """A local path that does not exist, said as such (transformers would call it a malformed hub id). Hub ids
    are ``name`` or ``org/name``; anything absolute, relative (``./``, ``../``, ``~``) or deeper is a path."""
    from pathlib import Path

    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key} must be a Hugging Face id or a local path, got {name!r}")
    if name.split(":")[0] in ("embedded", "package", "truncated"):
        return
    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if local and not Path(name).expanduser().exists():
        raise ConfigError(f"{key}: no such model directory {name}")


def _device(device) -> None:
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.split(":")[0] == "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} but no CUDA device is available here; use device=auto or device=cpu")


def _rollout_backend(r, method) -> None:
    from cdistill.objectives.importance import LEVELS
    from cdistill.rollout import engines

    if r.backend not in engines.BACKENDS:
        raise ConfigError(f"unknown rollout.backend {r.backend!r}; expected one of {', '.join(engines.BACKENDS)}")
    if r.importance_correction not in LEVELS:
        raise ConfigError(f"unknown rollout.importance_correction {r.importance_correction!r}; expected one of "
                          f"{', '.join(LEVELS)}")
    _positive(r, "rollout", ("importance_cap",))
    if r.backend != "vllm":
        return
    if method.conditions_on_budget:
        raise ConfigError(f"method {method.name} samples token by token with the teacher tracking the budget; "
                          "vLLM cannot: use rollout.backend=hf")
    if not engines.vllm_available():
        raise ConfigError("rollout.backend=vllm needs vLLM, which is not installed: pip install 'cdistill[vllm]' "
                          "(Linux, CUDA GPU)")


def validate_launch(cfg, method, sharded: bool) -> None:
    """What a launch with the student sharded (FSDP2) cannot run."""
    if not sharded:
        return
    if cfg.model.student.get("lora") or method.conditions_on_budget:
        raise ConfigError("under FSDP the student is trained whole and sampled with generate(): a LoRA student "
                          "(small enough to replicate) or saute's token loop runs with DDP instead")
    if method.uses_cached_teacher_solutions and cfg.model.teacher.get("shard", True):
        raise ConfigError("seqkd generates each rank's missing teacher solutions once, a different number of calls "
                          "per rank, which a sharded teacher cannot serve; set model.teacher.shard=false")
