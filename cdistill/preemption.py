"""Preemption: a cluster's SIGTERM (or SIGUSR1 ahead of a time limit) ends a run cleanly instead of killing it.

The signal is only recorded; the loop finishes the step it is in, every rank agrees that a signal came (one may
have received it alone), a checkpoint is written, and the run exits with ``EXIT_CODE``. ``resume=auto`` continues
it exactly; a job that Slurm requeued (``SLURM_RESTART_COUNT`` > 0) resumes by itself (``cdistill.cli``).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; run the same command again to continue


class Preempted(Exception):
    """The run stopped at a signal after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}, checkpoint {checkpoint}; "
                         "the same command with resume=auto continues it")


class Preemption:
    """While active, SIGTERM and SIGUSR1 are recorded instead of ending the process (main thread only: Python
    delivers signals there); the previous handlers come back on exit."""

    def __enter__(self) -> Preemption:
        self.signum: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._record)
        return self

    def _record(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: installed outside Python

    def requested(self, dist) -> int | None:
        """The signal that asked this run to stop, on any rank (every rank must call this at the same step)."""
        seen = torch.tensor([float(self.signum == s) for s in SIGNALS])
        if dist.world > 1:  # one rank may have received it alone: all stop together
            seen = dist.sum(seen.to(dist.accelerator.device)).cpu()
        return next((int(s) for s, n in zip(SIGNALS, seen.tolist(), strict=True) if n > 0), None)
