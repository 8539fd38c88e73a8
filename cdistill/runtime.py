"""Turning a config into live objects: device, seeds, task, tokenizer, student, teacher."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

from cdistill.budget import load_if_present
from cdistill.models import DTYPES, check_same_vocabulary, load_model, load_tokenizer, real_vocab_size
from cdistill.tasks import Task, build_task

EMBEDDED = "embedded:"


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
    """``embedded:<role>`` → the cached embedded build (built on first use); anything else unchanged."""
    if not name_or_path.startswith(EMBEDDED):
        return name_or_path
    from cdistill.embedded import ensure_built

    role = name_or_path[len(EMBEDDED):]
    if role not in ("student", "teacher"):
        raise ValueError(f"unknown embedded model {name_or_path!r}; expected embedded:student or embedded:teacher")
    return str(ensure_built(cfg.model.embedded, cfg.task, absolute(cfg.paths.cache), role))


@dataclass
class Components:
    task: Task
    tokenizer: object
    student: torch.nn.Module
    teacher: torch.nn.Module
    vocab: int
    device: str


def build_components(cfg, student_path: str | None = None) -> Components:
    device = pick_device(cfg.device)
    task = build_task(cfg.task)
    teacher_path = resolve_model_path(cfg.model.teacher.name_or_path, cfg)
    student_path = student_path or resolve_model_path(cfg.model.student.name_or_path, cfg)
    tokenizer = load_tokenizer(teacher_path)
    task.bind_tokenizer(tokenizer)
    check_same_vocabulary(load_tokenizer(student_path), tokenizer)
    student = load_model(student_path, cfg.model.student.dtype, device)
    load_if_present(student, student_path)  # a saute student's budget input
    teacher = load_model(teacher_path, cfg.model.teacher.dtype, device).eval()
    teacher.requires_grad_(False)
    return Components(task, tokenizer, student, teacher, real_vocab_size(student, teacher, tokenizer), device)


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
