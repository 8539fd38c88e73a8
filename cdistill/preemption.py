"""Preemption: a cluster's SIGTERM (or SIGUSR1 ahead of a time limit) ends a run cleanly instead of killing it.

The signal is only recorded; the loop finishes the step it is in, every rank agrees that a signal came (one may
have received it alone), a checkpoint is written, ``preempted.json`` is left in the run directory, and the run
exits with ``EXIT_CODE``. The same command in the same run directory continues it exactly: ``cdistill.cli`` sets
``resume=auto`` when it finds the marker (or when Slurm requeued the job, ``SLURM_RESTART_COUNT`` > 0, which covers
a job killed before it could write one).

Inside a submitit job (``hydra/launcher=slurm``), submitit's own preemption signal (``SIGUSR2`` unless
``SUBMITIT_PREEMPT_SIGNAL`` names another) is recorded too, and once the checkpoint is written it is handed to
the handler submitit had installed for it, which requeues the job; submitit runs it again with the same
arguments, in the same run directory, and the marker makes it resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from pathlib import Path

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; run the same command again to continue
MARKER = "preempted.json"  # in the run directory: the run stopped on a signal and the same command continues it


class Preempted(Exception):
    """The run stopped at a signal after writing a checkpoint (``step`` is the last step done)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path, *, in_set_up: bool = False,
                 hand_over=None):
        self.signum, self.step, self.checkpoint, self.run_dir = signum, step, checkpoint, run_dir
        self.hand_over = hand_over  # submitit's handler, to call once the run has stopped: it requeues the job
        when = f"during set-up, before step {step + 1}" if in_set_up else f"after step {step}"
        then = ("handed to submitit to requeue the job, which continues it" if hand_over is not None
                else f"the same command with hydra.run.dir={run_dir} continues it")
        super().__init__(f"stopped by {signal.Signals(signum).name} {when}, "
                         f"{f'checkpoint {checkpoint}' if checkpoint else 'no checkpoint yet'}; {then}")


def submitit_signal() -> int | None:
    """The signal with which submitit asks the job this process runs to checkpoint and requeue, or None outside
    one. submitit's runner sets ``SUBMITIT_FOLDER`` (and has imported submitit) before it starts the job, so a
    run outside submitit never imports it."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return None
    try:
        from submitit import JobEnvironment
    except ImportError:
        return None
    return int(JobEnvironment._usr_sig())


class Preemption:
    """While active, SIGTERM, SIGUSR1 and (in a submitit job) submitit's signal are recorded instead of ending the
    process (main thread only: Python delivers signals there); the previous handlers come back on exit."""

    def __enter__(self) -> Preemption:
        self.signum: int | None = None  # the latest
        self.received: set[int] = set()
        self.previous = {}
        self.submitit = submitit_signal()
        # every rank of a run lists the same signals (they share the environment): ``requested`` reduces over it
        self.signals = (*SIGNALS, self.submitit) if self.submitit not in (None, *SIGNALS) else SIGNALS
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self.previous[s] = signal.signal(s, self._record)
        return self

    def _record(self, signum, frame) -> None:
        self.received.add(signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: installed outside Python

    def requested(self, dist) -> int | None:
        """The signal that asked this run to stop, on any rank (every rank must call this at the same step)."""
        seen = torch.tensor([float(s in self.received) for s in self.signals])
        if dist.world > 1:  # one rank may have received it alone: all stop together
            seen = dist.sum(seen.to(dist.accelerator.device)).cpu()
        came = [int(s) for s, n in zip(self.signals, seen.tolist(), strict=True) if n > 0]
        # submitit's signal wins: at a time limit Slurm sends it ahead and SIGTERM at the limit; a step and its
        # checkpoint that outlast the warning must still requeue the job
        return self.submitit if self.submitit in came else next(iter(came), None)

    def hand_over(self, signum: int):
        """What to call, once the run has stopped, to let submitit do what its signal asks (dump the job for a
        rerun, requeue it and exit; it does nothing on a task other than its rank 0), or None: not submitit's
        signal (SIGTERM is also what ``scancel`` sends: that job must not come back), or not its handler."""
        handler = self.previous.get(signum)
        if signum != self.submitit or not callable(handler):
            return None
        return lambda: handler(signum, None)


def command_of(cfg) -> str:
    """A digest of the command a run was started with (its whole config but ``resume``, which the continuation
    sets): the same command again continues a stopped run, even with ``overwrite=true``; another one with
    ``overwrite=true`` starts the directory over."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("resume", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mark(run_dir: Path, signum: int, step: int, checkpoint: Path | None, command: str) -> None:
    """Leave ``preempted.json`` in the run directory, whole or not at all (the main process)."""
    tmp = run_dir / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"signal": signal.Signals(signum).name, "step": step,
                               "checkpoint": str(checkpoint) if checkpoint else None, "command": command}) + "\n")
    os.replace(tmp, run_dir / MARKER)


def stopped_command(run_dir: Path) -> str | None:
    """The command digest of the run that stopped on a signal in ``run_dir``, or None if none did."""
    try:
        return json.loads((run_dir / MARKER).read_text()).get("command", "")
    except (OSError, ValueError):
        return None
