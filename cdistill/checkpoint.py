"""Checkpoints that resume a run exactly, written atomically.

``<run>/checkpoints/step-000120/`` holds the student (Hugging Face format), ``trainer.pt`` (optimizer,
scheduler, method state, every RNG, the prompt stream's position) and ``state.json`` (step, config
fingerprint, the start-of-run evaluations), plus copies of ``metrics.jsonl`` and ``evals.jsonl`` as they
stood at that step. A checkpoint is written under a temporary name, fsynced, then renamed: a directory
named ``step-*`` is always complete, whatever kills the run. ``checksums.json`` records every file's sha256, and a
checkpoint is checked against it before it is trusted: ``resume=auto`` passes over a damaged one (a copy cut
short, a disk error) to the newest intact one.

Under several processes the main process writes all of that, and every rank adds ``rank<i>.pt``: its own
RNG states and prompt stream (ranks sample different prompts), and under FSDP its shard of the optimiser
state. The student is gathered from the shards first. A checkpoint resumes with as many processes as wrote it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from cdistill.models.loading import save_student
from cdistill.runtime import disk_space_hint, parameter_bytes

DIR = "checkpoints"
PREFIX = "step-"
CHECKSUMS = "checksums.json"  # sha256 of every other file of the checkpoint, written last before sealing
log = logging.getLogger(__name__)
# keys that do not change what a run computes: a resumed run may differ in them
VOLATILE = ("resume", "overwrite", "debug", "logging", "checkpoint", "guards", "save_student", "selection")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, or written under another configuration)."""


# how a served teacher is reached, not what it computes: a requeued run may find it elsewhere
SERVER_TRANSPORT = ("base_url", "api", "api_key_env", "timeout", "retries", "max_concurrency")


def fingerprint(cfg) -> str:
    return hashlib.sha256(json.dumps(_computed(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _computed(cfg) -> dict:
    """What a run computes: its config less what may differ between a run and its continuation."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in VOLATILE:
        data.pop(key, None)
    teacher = data.get("model", {}).get("teacher", {})
    if teacher.get("backend", "local") == "local":  # as checkpoints written before these settings existed
        teacher.pop("backend", None)
        teacher.pop("server", None)
    else:
        for key in SERVER_TRANSPORT:
            teacher.get("server", {}).pop(key, None)
    for further in (data.get("model", {}).get("teachers") or {}).values():
        for key in SERVER_TRANSPORT:
            (further.get("server") or {}).pop(key, None)
    # several budgets, a soft_penalty weight per budget: absent or empty, a run computes what it did before they
    # existed, and a checkpoint written then must still resume
    for parent, key in ((data, "constraints"), (data.get("model", {}), "teachers"),
                        (data.get("method", {}), "penalties")):
        if parent.get(key) == {}:
            parent.pop(key)
    return data


def differences(old, new, limit: int = 3) -> str:
    """The settings in which two configs differ in what they compute, as ``key: old -> new`` (the first
    ``limit``, then how many more)."""
    def flat(node, prefix=""):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from flat(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1], node

    a, b = dict(flat(_computed(old))), dict(flat(_computed(new)))
    missing = object()
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
    shown = [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in keys[:limit]]
    return "; ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: Path, step: int, cfg, student, tokenizer, trainer: dict, state: dict, keep: int, dist,
         per_rank: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep``; returns its directory.

    Every process calls this (``dist``: the run's ``distributed.Dist``); ``per_rank`` is what differs between
    ranks (the prompt stream, a sharded optimiser state), saved with each rank's RNG states.
    """
    root = Path(run_dir) / DIR
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    previous = complete(run_dir)
    # what a checkpoint takes: the last one's size, or the weights and AdamW's two moments of the first
    needed = _size(previous[-1]) if previous else 3 * parameter_bytes(student)
    try:
        with disk_space_hint(root, f"checkpoint {final.name}", needed):
            _write(run_dir, tmp, final, root, step, cfg, student, tokenizer, trainer, state, keep, dist, per_rank)
    except BaseException:
        if dist.is_main:  # a partial write never looks like a checkpoint (older ones stay); the main rank owns it
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write(run_dir, tmp, final, root, step, cfg, student, tokenizer, trainer, state, keep, dist, per_rank) -> None:
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    if dist.world > 1:
        torch.save({**(per_rank or {}), "rng": rng_state()}, tmp / f"rank{dist.rank}.pt")
    weights = dist.state_dict(student) if dist.sharded else None  # gathered from every rank
    if dist.is_main:
        save_student(student.model if dist.sharded else student, tokenizer, tmp / "student", final=False,
                     state_dict=weights)
        torch.save({**trainer, **(per_rank or {}), "rng": rng_state()}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint(cfg),
                                                    "processes": dist.world, **state}, indent=2))
        for name in ("metrics.jsonl", "evals.jsonl"):
            if (Path(run_dir) / name).is_file():
                shutil.copyfile(Path(run_dir) / name, tmp / name)
    dist.barrier()  # every rank's file is in before the directory is sealed
    if dist.is_main:
        write_checksums(tmp)
        _fsync_tree(tmp)
        if final.exists():  # a checkpoint of the same step from before a crash: replaced whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        for old in complete(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(path: Path) -> None:
    """Record the sha256 of every file of a checkpoint being written, so that a copy cut short or corrupted
    later (a full disk, a bad transfer) is caught before it is trusted."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {str(p.relative_to(path)): _sha256(p) for p in files}
    (path / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def damage(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted (a file missing or not matching its checksum), or None
    when it is intact. A checkpoint written before checksums were recorded cannot be checked and is trusted."""
    record = path / CHECKSUMS
    if not record.is_file():
        return None
    try:
        sums = json.loads(record.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        sums = None
    if not isinstance(sums, dict):
        return f"its {CHECKSUMS} is unreadable"
    for name, want in sums.items():
        p = path / str(name)
        if not p.is_file():
            return f"{name} is missing"
        try:
            if _sha256(p) != want:
                return f"{name} does not match its checksum (cut short or corrupted)"
        except OSError as e:  # a disk error reading it back
            return f"{name} cannot be read ({e.strerror or e})"
    return None


def set_aside_newer(run_dir: Path, chosen: Path) -> None:
    """Rename the damaged checkpoints newer than ``chosen`` (the one a run resumes from) out of the ``step-*``
    namespace, so that keeping the newest N never counts them nor deletes the intact ones for them."""
    for path in complete(run_dir):
        if path.name > chosen.name:
            path.rename(path.with_name(f".damaged-{path.name}"))


def complete(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (temporary directories of killed writes are ignored)."""
    root = Path(run_dir) / DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "state.json").is_file())


def find(resume, run_dir: Path) -> Path | None:
    """The checkpoint that ``resume`` names: ``auto`` = the newest intact one of ``run_dir`` (None if there is
    none; a damaged newer one is passed over, in one logged line), or an explicit checkpoint directory, which must
    exist and be intact."""
    if resume in (None, False, ""):
        return None
    if resume == "auto":
        found = complete(run_dir)
        for path in reversed(found):
            problem = damage(path)
            if problem is None:
                return path
            older = "an older one" if path != found[0] else "none left"
            log.warning("checkpoint %s is damaged: %s; trying %s", path, problem, older)
        if found:
            raise CheckpointError(f"every checkpoint under {Path(run_dir) / DIR} is damaged; start over with "
                                  "overwrite=true or point resume= at an intact copy")
        return None
    path = Path(str(resume))
    if not (path / "state.json").is_file():
        raise CheckpointError(f"resume={resume}: no checkpoint there (expected a {DIR}/{PREFIX}* directory "
                              "with state.json)")
    problem = damage(path)
    if problem is not None:
        raise CheckpointError(f"resume={resume}: the checkpoint is damaged ({problem}); resume from an intact "
                              "one (resume=auto takes the newest intact checkpoint of the run)")
    return path


def load(path: Path, cfg, rank: int = 0, world: int = 1) -> tuple[dict, dict]:
    """(trainer state, state.json) of a checkpoint for process ``rank`` of ``world``, refused if it was
    written under another config or by another number of processes."""
    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != fingerprint(cfg):
        raise CheckpointError(f"{path} was written under a different configuration{_which(path, state, cfg)}; "
                              "resume with the run's own overrides (see its config.yaml) or start a new run "
                              "directory")
    written_by = state.get("processes", 1)
    if written_by != world:
        raise CheckpointError(f"{path} was written by {written_by} process(es); resume it with {written_by}, "
                              f"not {world}")
    # our own file: it holds RNG states (numpy tuples), which the weights-only loader refuses
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    if world > 1:  # this rank's own RNG states and prompt stream (and optimiser shard under FSDP)
        trainer.update(torch.load(path / f"rank{rank}.pt", weights_only=False))
    return trainer, state


def _which(path: Path, state: dict, cfg) -> str:
    """`` (key: old -> new; ...)``: how ``cfg`` differs from the config the checkpoint was written under, read from
    the run's config.yaml when that is the very config (its fingerprint is the checkpoint's), else nothing."""
    try:
        saved = OmegaConf.load(Path(path).parent.parent / "config.yaml")
    except (OSError, ValueError):
        return ""
    if fingerprint(saved) != state["fingerprint"]:
        return ""
    return f" ({differences(saved, cfg)})"


def restore_logs(path: Path, run_dir: Path) -> None:
    """Put the metrics and evaluations back as they stood at the checkpoint (drop lines logged after it)."""
    for name in ("metrics.jsonl", "evals.jsonl"):
        src, dst = path / name, Path(run_dir) / name
        if src.is_file():
            shutil.copyfile(src, dst)
        elif dst.exists():
            dst.unlink()
