"""Checks on a composed config that fail fast, before minutes of model building, with one clear line."""

from __future__ import annotations

from cdistill.methods import METHODS
from cdistill.objectives import COSTS, KINDS
from cdistill.objectives.advantages import SCALES


class ConfigError(ValueError):
    pass


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def validate(cfg) -> None:
    if cfg.method.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.method.name!r}; available: {', '.join(sorted(METHODS))}")
    c = cfg.constraint
    if c.cost not in COSTS:
        raise ConfigError(f"unknown constraint.cost {c.cost!r}; expected one of {', '.join(COSTS)}")
    if c.kind not in KINDS:
        raise ConfigError(f"unknown constraint.kind {c.kind!r}; expected one of {', '.join(KINDS)}")
    if _number(c.threshold, "constraint.threshold") <= 0 and c.cost != "logratio":
        raise ConfigError(f"constraint.threshold must be positive for cost {c.cost}, got {c.threshold}")
    r = cfg.rollout
    for key in ("max_new_tokens", "prompts_per_step", "samples_per_prompt"):
        if int(_number(r[key], f"rollout.{key}")) <= 0:
            raise ConfigError(f"rollout.{key} must be positive, got {r[key]}")
    if _number(r.temperature, "rollout.temperature") <= 0:
        raise ConfigError(f"rollout.temperature must be positive, got {r.temperature}")
    o = cfg.optim
    for key in ("steps", "inner_epochs", "micro_batch"):
        if int(_number(o[key], f"optim.{key}")) <= 0:
            raise ConfigError(f"optim.{key} must be positive, got {o[key]}")
    if _number(o.lr, "optim.lr") <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if o.adv_scale not in SCALES:
        raise ConfigError(f"unknown optim.adv_scale {o.adv_scale!r}; expected one of {', '.join(SCALES)}")
    if o.schedule not in ("constant", "cosine"):
        raise ConfigError(f"unknown optim.schedule {o.schedule!r}; expected constant or cosine")
    for key in ("chunk", "micro_batch"):
        if int(_number(cfg.scoring[key], f"scoring.{key}")) <= 0:
            raise ConfigError(f"scoring.{key} must be positive, got {cfg.scoring[key]}")
