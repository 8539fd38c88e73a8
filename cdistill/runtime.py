"""What every command needs from its surroundings: the device, seeds, paths from the config, mixed
precision, and one-line out-of-memory errors."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path


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


def autocast(cfg, device: str):
    """Mixed precision for forward passes (``autocast: bfloat16``), or nothing (``autocast: null``)."""
    name = cfg.get("autocast")
    if not name:
        return contextlib.nullcontext()
    from cdistill.models.loading import DTYPES

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
