"""Preemption: a cluster's SIGTERM (or SIGUSR1 ahead of a time limit) ends a run cleanly instead of killing it.

The first signal is only recorded; the loop finishes the step it is in, every rank agrees that a signal came (one
may have received it alone), a checkpoint is written, ``preempted.json`` is left in the run directory, and the run
exits with ``EXIT_CODE``. The same command in the same run directory continues it exactly: ``cdistill.cli`` sets
``resume=auto`` when it finds the marker (or when Slurm requeued the job, ``SLURM_RESTART_COUNT`` > 0, which covers
a job killed before it could write one).

Finishing the step is not waited for without limit (a step can take as long as ``rollout.max_new_tokens`` lets
a rollout run). The run stops at once, in the middle of the step, when

- a SIGTERM or SIGINT (Ctrl-C) comes while a stop is pending (after SIGTERM, SIGUSR1 or submitit's signal); a
  SIGTERM within ``ECHO_SECONDS`` of the first is the same request delivered twice (by Slurm to every process of
  the job, and again by the launcher that forwards it), not a second one;
- ``checkpoint.grace_seconds`` (``GRACE_KEY``) pass after the first SIGTERM before the run has stopped: the step
  and its checkpoint, or set-up, or the final save and evaluation. ``null``: no limit (wait for the step however
  long it takes); ``0``: the first SIGTERM stops at once. SIGUSR1 and submitit's signal start no clock: they warn
  ahead of a time limit by a lead the user chose (``--signal=USR1@120``, ``signal_delay_s``), and the SIGTERM that
  Slurm sends at the limit, a second stop request, then stops at once.

A stop at once writes no checkpoint (the state in the middle of a step is not consistent). When the run has a
checkpoint, ``preempted.json`` names the newest (the one ``resume=auto`` takes) and the run exits with
``EXIT_CODE``: the same command continues from it, the steps after it done again; so it does when no step was done
yet (the same command starts the run). A run that did steps but holds no checkpoint cannot continue: it leaves no
marker and exits 128 + the signal's number, as a process killed by it would (143 for SIGTERM, 130 for SIGINT).

A first SIGINT is not a stop request: it raises ``KeyboardInterrupt`` as before (or does nothing where SIGINT was
ignored), since Ctrl-C at a terminal is not a cluster's preemption and a run should not linger after it. Only
after a recorded signal does it mean "stop now".

Under several processes each rank handles its own signals and its own grace period: a rank that stops at once
cannot wait for the others (they may be in the middle of a collective with it, which would never complete), so
it neither syncs nor reduces; whichever rank stops at once writes the marker (every rank computes the same one
from the run directory), and the launcher ends the others (torchrun stops the remaining workers once one exits).
A rank blocked inside a collective or another long native call reacts when that call returns; only Python code
can be interrupted, which is why a generation loop (it returns to Python between tokens) can be.

Inside a submitit job (``hydra/launcher=slurm``), submitit's own preemption signal (``SIGUSR2`` unless
``SUBMITIT_PREEMPT_SIGNAL`` names another) is recorded too, and once the checkpoint is written (or, stopped at
once, the marker) it is handed to the handler submitit had installed for it, which requeues the job; submitit runs
it again with the same arguments, in the same run directory, and the marker makes it resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; run the same command again to continue
MARKER = "preempted.json"  # in the run directory: the run stopped on a signal and the same command continues it
# under checkpoint, which checkpoint fingerprints leave out: it changes nothing a run computes, a continuation may
# change it, and checkpoints written before it existed still resume
GRACE_KEY = "checkpoint.grace_seconds"
# a SIGTERM this soon after the first is the same request heard twice, not a second one: Slurm signals every
# process of a job, and a launcher (torchrun, accelerate, cdistill protocol) forwards it to its children as well
ECHO_SECONDS = 0.5


class Preempted(Exception):
    """The run stopped at a signal after writing a checkpoint (``step`` is the last step done); the process exits
    with ``exit_code``."""

    exit_code = EXIT_CODE

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path, *, in_set_up: bool = False,
                 hand_over=None):
        self.signum, self.step, self.checkpoint, self.run_dir = signum, step, checkpoint, run_dir
        self.hand_over = hand_over  # submitit's handler, to call once the run has stopped: it requeues the job
        when = f"during set-up, before step {step + 1}" if in_set_up else f"after step {step}"
        then = ("handed to submitit to requeue the job, which continues it" if hand_over is not None
                else f"the same command with hydra.run.dir={run_dir} continues it")
        super().__init__(f"stopped by {signal.Signals(signum).name} {when}, "
                         f"{f'checkpoint {checkpoint}' if checkpoint else 'no checkpoint yet'}; {then}")


class StopAtOnce(BaseException):
    """Raised by the signal handler, in the main thread, wherever the run is: a second stop request came, or the
    grace period ran out. A BaseException, like KeyboardInterrupt: code that catches Exception to survive a bad
    input (an answer the verifier cannot parse) must not swallow it."""

    def __init__(self, signum: int, first: int, grace: float | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum  # what stopped the run (SIGTERM when the grace period ran out)
        self.first = first  # the stop request that was pending
        self.grace = grace  # the grace period that ran out, or None: a second signal


class StoppedAtOnce(Preempted):
    """The run stopped in the middle of ``doing`` without writing a checkpoint. ``checkpoint`` is the newest that
    exists; ``done`` the steps done before ``doing``. It continues (marker written, ``EXIT_CODE``) from that
    checkpoint, or from nothing when no step was done; otherwise it exits as the signal would have ended it."""

    def __init__(self, halt: StopAtOnce, doing: str, done: int, checkpoint: Path | None, run_dir: Path, *,
                 hand_over=None):
        self.signum, self.checkpoint, self.run_dir, self.hand_over = halt.signum, checkpoint, run_dir, hand_over
        self.step = checkpoint_step(checkpoint) if checkpoint else 0
        self.continues = checkpoint is not None or done == 0
        self.exit_code = EXIT_CODE if self.continues else 128 + halt.signum
        name, first = signal.Signals(halt.signum).name, signal.Signals(halt.first).name
        if halt.grace:
            why = f"{first} without finishing {doing} in its grace period ({GRACE_KEY}={halt.grace:g})"
        else:
            why = (f"{first} ({GRACE_KEY}=0: at once)" if halt.grace == 0 else f"a second {name}"
                   if halt.signum == halt.first else f"{name} after {first}") + f" without finishing {doing}"
        if not self.continues:
            lost = "step 1 is" if done == 1 else f"steps 1-{done} are"
            then = f"no checkpoint, so {lost} lost: overwrite=true starts the run over"
        else:
            verb = "continues from it" if checkpoint else "starts it"
            then = (f"checkpoint {checkpoint} (step {self.step}) is the newest" if checkpoint else "no checkpoint yet")
            then += (f": handed to submitit to requeue the job, which {verb}" if hand_over is not None
                     else f": the same command with hydra.run.dir={run_dir} {verb}")
        Exception.__init__(self, f"stopped by {why}; {then}")


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint directory, from its name (``step-000120``: ``cdistill.checkpoint``)."""
    return int(path.name.rpartition("-")[2])


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


def _seconds(value) -> float | None:
    """``value`` as a grace period, or None (no limit). Set-up checks the config moments after the handlers are
    installed and refuses a bad value in one line; a signal in between must not break the handler meanwhile."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf")
    return float(value) if ok else None


def _notice(line: str) -> None:
    """A line on stderr from inside a signal handler: one raw write, since the handler may run while the main
    thread is in the middle of writing to ``sys.stderr`` (its buffer refuses a reentrant write)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


class Preemption:
    """While active, SIGTERM, SIGUSR1 and (in a submitit job) submitit's signal are recorded instead of ending the
    process, and a SIGTERM or SIGINT while one is pending, or the end of ``grace_seconds`` after the first SIGTERM,
    raises ``StopAtOnce`` in the main thread (main thread only: Python delivers signals there); the previous
    handlers come back on exit."""

    def __init__(self, grace_seconds: float | None = None):
        self.grace = _seconds(grace_seconds)

    def __enter__(self) -> Preemption:
        self.signum: int | None = None  # the latest
        self.first: int | None = None  # the one that asked to stop: later ones stop at once
        self._first_at = 0.0
        self.received: set[int] = set()
        self.previous = {}
        self.halted = False  # StopAtOnce was raised: the run is on its way out, later signals change nothing
        self._closing = False
        self._expired = False
        self._armed = False  # the timer may still signal the main thread
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # orders the timer's signal before __exit__ restores the handlers
        self.submitit = submitit_signal()
        # every rank of a run lists the same signals (they share the environment): ``requested`` reduces over it
        self.signals = (*SIGNALS, self.submitit) if self.submitit not in (None, *SIGNALS) else SIGNALS
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self.previous[s] = signal.signal(s, self._record)
            if signal.SIGINT not in self.signals:
                self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def _record(self, signum, frame) -> None:
        pending = self.first is not None
        self.received.add(signum)
        self.signum = signum
        if self._closing or self.halted:
            return
        if signum == signal.SIGTERM and self._expired:  # sent by the grace timer
            self._halt(signal.SIGTERM, self.grace)
        if signum == signal.SIGTERM and pending:
            if self.first == signal.SIGTERM and time.monotonic() - self._first_at < ECHO_SECONDS:
                return
            self._halt(signum)
        if pending:  # another warning (SIGUSR1, submitit's): the stop already asked for stands
            return
        self.first, self._first_at = signum, time.monotonic()
        if signum == signal.SIGTERM and self.grace == 0:
            self._halt(signum, 0.0)
        limit = ""
        if signum == signal.SIGTERM and self.grace is not None:
            limit = f" (at most {self.grace:g} s: {GRACE_KEY})"
            self._start_timer()
        _notice(f"cdistill: {signal.Signals(signum).name} received: stopping once the step in progress is done and "
                f"saved{limit}; {'a second SIGTERM' if signum == signal.SIGTERM else 'SIGTERM'} or Ctrl-C stops "
                "at once")

    def _interrupt(self, signum, frame) -> None:
        if self.first is not None and not self._closing:
            if not self.halted:
                self._halt(signum)
            return  # already stopping at once: a KeyboardInterrupt would only cut that short
        previous = self.previous.get(signum)
        if callable(previous):  # Python's default_int_handler: KeyboardInterrupt, as without this handler
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # SIG_DFL, or a handler outside Python: the nearest Python can do
            raise KeyboardInterrupt

    def _halt(self, signum: int, grace: float | None = None):
        self.halted = True
        raise StopAtOnce(signum, self.first if self.first is not None else signum, grace)

    def _start_timer(self) -> None:
        # A thread, not signal.alarm / setitimer: the answer verifier (math_verify) arms and cancels SIGALRM's
        # timer in the main thread around every parse, which would cancel ours. The thread interrupts the main
        # thread with a real signal rather than _thread.interrupt_main: a signal also breaks a blocking wait there
        # (a lock, a socket to a served teacher, a sleep), whose handler then raises; Python code in between, a
        # generation loop between tokens included, is interrupted at its next bytecode. A native call that holds
        # on (one long kernel, a collective) is interrupted when it returns.
        self._main = threading.main_thread().ident
        self._armed = True
        self._timer = threading.Timer(self.grace, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._armed:
                self._expired = True
                signal.pthread_kill(self._main, signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        self._closing = True  # set first: the timer's SIGTERM may still arrive while the lock is awaited
        with self._lock:
            self._armed = False
            if self._timer is not None:
                self._timer.cancel()
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: installed outside Python

    def requested(self, dist) -> int | None:
        """The signal that asked this run to stop, on any rank (every rank must call this at the same step)."""
        seen = torch.tensor([float(s in self.received) for s in self.signals])
        if dist.world > 1:  # one rank may have received it alone: all stop together
            seen = dist.sum(seen.to(dist.accelerator.device)).cpu()
        came = [int(s) for s, n in zip(self.signals, seen.tolist(), strict=True) if n > 0]
        # submitit's signal wins: a job it asked to requeue must come back, whether a SIGTERM (a preemption, or the
        # time limit it warned of) came before it or not
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
    tmp = run_dir / f".{MARKER}.{os.getpid()}.tmp"  # a rank that stops at once may write it beside another
    tmp.write_text(json.dumps({"signal": signal.Signals(signum).name, "step": step,
                               "checkpoint": str(checkpoint) if checkpoint else None, "command": command}) + "\n")
    os.replace(tmp, run_dir / MARKER)


def stopped_command(run_dir: Path) -> str | None:
    """The command digest of the run that stopped on a signal in ``run_dir``, or None if none did."""
    try:
        return json.loads((run_dir / MARKER).read_text()).get("command", "")
    except (OSError, ValueError):
        return None
