"""What every command needs from its surroundings: the device, seeds, paths from the config, mixed
precision, and one-line errors when memory or disk space runs out."""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

# the dtypes a config may name, for model weights and for autocast: here, below models.loading, so that autocast
# needs no model code
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    if name not in DTYPES:
        raise ValueError(f"unknown autocast dtype {name!r}; expected bfloat16, float16 or null")
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=DTYPES[name])


class ResourceError(RuntimeError):
    """The hardware ran out (GPU memory, disk space): the message names what ran out and what to change."""


def parameter_bytes(model) -> int:
    """The bytes of a model's parameters: what saving its weights takes on disk."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# how writers that do not raise OSError say it: torch.save (RuntimeError from its zip writer, no errno) and
# safetensors (SafetensorError "I/O error: ... (os error 28)")
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


def _short_of(directory, needed_bytes: float | None) -> bool:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return False
    return free < max(needed_bytes or 0, 2**20)


def out_of_space(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) is a full disk or quota."""
    while e is not None:
        if getattr(e, "errno", None) in NO_SPACE or any(t in str(e).lower() for t in _NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def disk_space_hint(directory, what: str, needed_bytes: float | None = None):
    """Turn a full disk (or quota) while writing ``what`` under ``directory`` into one line that names the
    directory, the space it needs (when known) and the space left."""
    try:
        yield
    except Exception as e:
        # torch.save's zip writer reports a full disk as "unexpected pos" with no errno: the free space tells
        if not out_of_space(e) and not _short_of(directory, needed_bytes):
            raise
        try:
            free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        need = f"it needs about {needed_bytes / 2**20:.0f} MiB, " if needed_bytes else ""
        raise ResourceError(f"no space left on the device of {directory} while writing {what} ({need}{free}); "
                            "free some space or point the run elsewhere") from e


@contextlib.contextmanager
def out_of_memory_hint(what: str, remedy: str):
    """Turn an out-of-memory error inside the block into one line that says what ran out and what to change."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise ResourceError(f"{what} ran out of GPU memory ({str(e).splitlines()[0][:120]}); {remedy}") from e
