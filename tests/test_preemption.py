"""Preemption: a signal during set-up, during a step or while the run finishes; submitit's requeue (its local
executor, driven through the Hydra launcher); one rank of two signalled alone; a step that never ends, stopped at
once by a second signal or by the end of the grace period."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, tiny_cfg
from safetensors.torch import load_file

from cdistill.checkpoint import damage
from cdistill.cli import requeued
from cdistill.preemption import MARKER, Preempted, Preemption, StopAtOnce, StoppedAtOnce, command_of, mark
from cdistill.train import train

# long enough to be stopped in the middle; only the stop writes a checkpoint
LONG = [*TINY, "optim.steps=30", "checkpoint.every=0", "method=lagrangian", "eval.at_start=true"]


@pytest.fixture
def survives_signals(monkeypatch):
    """A signal that the code under test fails to catch fails the test instead of ending pytest. Signals sent here
    back to back are each a request of their own (no echo window)."""
    import cdistill.preemption

    monkeypatch.setattr(cdistill.preemption, "ECHO_SECONDS", 0.0)

    def unexpected(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} was not caught by the run")

    sigs = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    previous = {s: signal.signal(s, unexpected) for s in sigs}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def signal_during(monkeypatch, name: str, signum: int = signal.SIGTERM, call: int = 1):
    """Make ``cdistill.train.<name>`` send ``signum`` to this process on its ``call``-th call, before it runs."""
    import cdistill.train as tr

    real, calls = getattr(tr, name), {"n": 0}

    def signalled(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)  # Python runs the handler at once, in this (main) thread
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, name, signalled)


def records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_") and k not in ("seconds", "eval/seconds")}
            for r in rows]


def same_student(a: Path, b: Path) -> bool:
    wa, wb = (load_file(str(d / "student" / "model.safetensors")) for d in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise on CPU


def test_a_signal_during_set_up_stops_before_the_first_step_and_the_directory_then_starts_by_itself(
        tmp_path, cache, monkeypatch, survives_signals):
    signal_during(monkeypatch, "build_components")  # while the models are built
    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=2", "eval.at_start=true", cache=cache)
    with pytest.raises(Preempted) as stopped:
        train(cfg, run)
    assert str(stopped.value) == (f"stopped by SIGTERM during set-up, before step 1, no checkpoint yet; the same "
                                  f"command with hydra.run.dir={run} continues it")
    assert stopped.value.hand_over is None and not (run / "checkpoints").exists()
    assert not (run / "evals.jsonl").exists()  # stopped before the start-of-run evaluations, not after them
    assert json.loads((run / MARKER).read_text()) == {"signal": "SIGTERM", "step": 0, "checkpoint": None,
                                                      "command": command_of(cfg)}
    assert requeued(run, cfg)  # the CLI then sets resume=auto: with no checkpoint, the run starts from nothing
    monkeypatch.undo()
    summary = train(tiny_cfg(tmp_path, "optim.steps=2", "eval.at_start=true", "resume=auto", cache=cache), run)
    assert summary["steps"] == 2 and not (run / MARKER).exists() and not requeued(run, cfg)


def test_overwrite_starts_a_stopped_directory_over_unless_it_is_the_very_command_that_stopped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stopped_cfg = tiny_cfg(tmp_path, "optim.steps=5", "overwrite=true")
    mark(run, signal.SIGTERM, 3, None, command_of(stopped_cfg))
    assert requeued(run, stopped_cfg)  # the same command again (a requeue of it) continues
    assert requeued(run, tiny_cfg(tmp_path, "optim.steps=5", "overwrite=true", "resume=auto"))  # resume is not it
    assert not requeued(run, tiny_cfg(tmp_path, "optim.steps=7", "overwrite=true"))  # another command starts over
    assert requeued(run, tiny_cfg(tmp_path, "optim.steps=7"))  # without overwrite the marker continues it


def test_a_fresh_start_with_overwrite_leaves_nothing_of_the_run_it_replaces(tmp_path, cache):
    run = tmp_path / "run"
    run.mkdir()
    train(tiny_cfg(tmp_path, "optim.steps=3", "checkpoint.every=1", "checkpoint.keep=5", "eval.at_start=false",
                   cache=cache), run)
    assert (run / "checkpoints" / "step-000002").is_dir()
    # the new run's only checkpoint is older than the old run's: pruning or resume=auto would pick the wrong one
    train(tiny_cfg(tmp_path, "optim.steps=1", "checkpoint.every=0", "eval.at_start=false", "overwrite=true",
                   cache=cache), run)
    assert not (run / "checkpoints").exists()
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


def test_submitits_signal_wins_over_a_later_sigterm(monkeypatch):
    submitit = pytest.importorskip("submitit")
    usr = int(submitit.JobEnvironment._usr_sig())
    monkeypatch.setenv("SUBMITIT_FOLDER", "x")

    class Alone:
        world = 1

    with Preemption() as preemption:  # at a time limit Slurm warns with submitit's signal, then sends SIGTERM
        preemption._record(usr, None)
        with pytest.raises(StopAtOnce) as halt:  # the limit: no more waiting for the step
            preemption._record(signal.SIGTERM, None)
        assert halt.value.first == usr  # whose hand-over then requeues the job
        assert preemption.requested(Alone()) == usr
    with Preemption() as preemption:
        assert preemption.requested(Alone()) is None
        preemption._record(signal.SIGUSR1, None)
        assert preemption.requested(Alone()) == signal.SIGUSR1


def test_a_signal_while_the_run_finishes_lets_it_finish(tmp_path, cache, monkeypatch, survives_signals, caplog):
    signal_during(monkeypatch, "save_student")
    run = tmp_path / "run"
    run.mkdir()
    with caplog.at_level("WARNING", logger="cdistill.train"):
        summary = train(tiny_cfg(tmp_path, "optim.steps=2", "eval.at_start=false", cache=cache), run)
    assert summary["steps"] == 2 and (run / "summary.json").is_file() and (run / "student").is_dir()
    assert not (run / MARKER).exists() and not (run / "checkpoints").exists()
    assert "SIGTERM came while the run was finishing: it finished first" in caplog.text


def test_in_a_submitit_job_its_signal_goes_to_its_handler_after_the_checkpoint_and_sigterm_does_not(
        tmp_path, cache, monkeypatch, survives_signals):
    submitit = pytest.importorskip("submitit")
    usr = submitit.JobEnvironment._usr_sig()  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "submitit"))  # what submitit's job runner sets
    run = tmp_path / "run"
    run.mkdir()
    handed = []
    # stands for submitit's checkpoint_and_try_requeue: what the run directory holds when it is called
    previous = signal.signal(usr, lambda s, f: handed.append((s, sorted(os.listdir(run / "checkpoints")))))
    try:
        signal_during(monkeypatch, "train_step", usr, call=2)
        with pytest.raises(Preempted) as stopped:
            train(tiny_cfg(tmp_path, "optim.steps=4", "eval.at_start=false", cache=cache), run)
        assert not handed  # not during the step
        assert stopped.value.step == 2 and "handed to submitit to requeue the job" in str(stopped.value)
        stopped.value.hand_over()
        assert handed == [(usr, ["step-000002"])]
        assert json.loads((run / MARKER).read_text())["signal"] == signal.Signals(usr).name

        # SIGTERM is also what `scancel` sends: it stops the run (exit 75) without asking submitit to requeue it
        monkeypatch.undo()
        monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "submitit"))
        signal_during(monkeypatch, "train_step", signal.SIGTERM, call=1)
        with pytest.raises(Preempted) as stopped:
            train(tiny_cfg(tmp_path, "optim.steps=4", "eval.at_start=false", "resume=auto", cache=cache), run)
        assert stopped.value.step == 3 and stopped.value.hand_over is None and len(handed) == 1
    finally:
        signal.signal(usr, previous)


def task_pids(cwd: Path, marker: str, env: str | None = None) -> list[int]:
    """Processes started in ``cwd`` whose command line holds ``marker`` (and whose environment holds ``env``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and marker in proc.joinpath("cmdline").read_bytes().decode(errors="replace")
                    and os.readlink(proc / "cwd") == str(cwd)
                    and (env is None or env.encode() in proc.joinpath("environ").read_bytes().split(b"\0"))):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def wait_for_steps(metrics_glob: str, root: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Wait until a ``metrics.jsonl`` under ``root`` records ``n`` steps; its run directory."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        for metrics in root.glob(metrics_glob):
            if metrics.read_text().count('"time_step"') >= n:
                return metrics.parent
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    err = proc.communicate(timeout=60)[1]
    raise AssertionError(f"no run reached step {n}: {err[-2000:]}")


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="finds the job's process through /proc")
def test_under_the_submitit_launcher_its_signal_checkpoints_requeues_and_the_job_ends_as_an_uninterrupted_run(
        tmp_path, cache):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    submitit = pytest.importorskip("submitit")
    usr = submitit.JobEnvironment._usr_sig()
    args = [*LONG, f"paths.cache={cache}"]
    straight = tmp_path / "straight"
    done = subprocess.run([sys.executable, "-m", "cdistill.cli", "train", *args, f"hydra.run.dir={straight}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    # the sweep's default directory, outputs/sweeps/${now:...}, under the launch directory
    launch = tmp_path / "launch"
    launch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cdistill.cli", "train", "-m", "hydra/launcher=submitit_local",
                             *args], cwd=launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop_after = random.Random().randint(1, 10)
    job = wait_for_steps("outputs/sweeps/*/*/metrics.jsonl", launch, stop_after, proc)
    (task,) = task_pids(launch, "submitit.core._submit")
    os.kill(task, usr)  # what Slurm sends ahead of the time limit (submitit's sbatch --signal), or a preemption
    signalled_at = time.strftime("%Y-%m-%d_%H-%M-%S")  # the earliest ${now:...} that the requeued job could resolve
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    # one sweep, one job directory: the requeued job (seconds later) continued in the directory it was stopped in,
    # ${now:...} in hydra.sweep.dir included (the launcher pickled with the job holds its resolved value)
    assert [p.relative_to(launch) for p in launch.glob("outputs/sweeps/*/*/metrics.jsonl")] == [
        job.relative_to(launch) / "metrics.jsonl"]
    assert job.parent.name < signalled_at
    # submitit's folder holds one job (the task's output of both of its runs, appended): it ran again as itself
    (err_log,) = job.parent.glob(".submitit/*/*_0_log.err")
    (stop,) = [ln for ln in err_log.read_text().splitlines() if ln.startswith("cdistill: stopped by")]
    step = int(stop.split("after step ")[1].split(",")[0])
    assert stop == (f"cdistill: stopped by {signal.Signals(usr).name} after step {step}, checkpoint "
                    f"{job / 'checkpoints' / f'step-{step:06d}'}; handed to submitit to requeue the job, which "
                    "continues it")
    out_log = err_log.with_name(err_log.name.replace(".err", ".out")).read_text()
    assert "this job is preempted" in err_log.read_text() and "Requeued job" in out_log
    assert f"resumed from {job / 'checkpoints' / f'step-{step:06d}'} at step {step + 1}" in out_log
    assert step >= stop_after
    assert (job / "checkpoints" / f"step-{step:06d}" / "checksums.json").is_file()
    assert (job / "summary.json").is_file() and not (job / MARKER).exists()
    assert same_student(straight, job) and records(straight) == records(job)


def two_processes(run: Path, cache: Path, port: int) -> list[str]:
    from test_distributed import COMMON  # the tiny two-process run of the distributed tests

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    common = [o for o in COMMON if not o.startswith(("optim.steps", "checkpoint."))]
    return [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "cdistill.cli", "train", *common,
            "optim.steps=12", "checkpoint.every=0", f"paths.cache={cache}", f"hydra.run.dir={run}"]


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="finds the ranks' processes through /proc")
def test_a_signal_to_one_rank_of_two_stops_both_after_the_same_step_and_the_rerun_ends_as_an_uninterrupted_run(
        tmp_path, cache):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = subprocess.run(two_processes(straight, cache, 29571), capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    if done.returncode and "Address already in use" in done.stderr:
        pytest.skip("port 29571 is taken on this machine")
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(two_processes(stopped, cache, 29572), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    stop_after = random.Random().randint(1, 6)
    wait_for_steps("stopped/metrics.jsonl", tmp_path, stop_after, proc)
    (rank1,) = task_pids(tmp_path, "cdistill.cli", env="RANK=1")
    os.kill(rank1, signal.SIGTERM)  # the other rank hears nothing: the ranks agree at the end of the step
    _, err = proc.communicate(timeout=600)
    # torchrun reports a worker's non-zero exit as a failure of the launch: it exits 1 and names the 75
    assert proc.returncode == 1 and "exitcode  : 75" in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("cdistill: stopped by")]
    assert len(lines) == 2 and len(set(lines)) == 1, lines  # each rank: the same step, the same checkpoint
    line = lines[0]
    step = int(line.split("after step ")[1].split(",")[0])
    assert line.startswith(f"cdistill: stopped by SIGTERM after step {step}, checkpoint ") and step >= stop_after
    ckpt = stopped / "checkpoints" / f"step-{step:06d}"
    assert {p.name for p in ckpt.glob("rank*.pt")} == {"rank0.pt", "rank1.pt"}
    assert json.loads((stopped / MARKER).read_text())["step"] == step

    again = subprocess.run(two_processes(stopped, cache, 29573), capture_output=True, text=True, timeout=600,
                           env=env, cwd=tmp_path)  # the same command: the marker makes it resume
    assert again.returncode == 0, again.stderr[-3000:]
    for i in (0, 1):  # the same weights (a digest of them) and λ on every rank as without the stop
        assert (stopped / "ranks" / f"rank{i}.json").read_text() == (straight / "ranks" / f"rank{i}.json").read_text()
    assert records(stopped) == records(straight) and not (stopped / MARKER).exists()


def test_after_a_stop_request_sigterm_or_sigint_stops_at_once_and_a_first_sigint_is_a_keyboard_interrupt(
        survives_signals):
    # Python's own handler, even where the tests run with SIGINT ignored (a background job without job control)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Preemption(grace_seconds=None) as preemption:
            with pytest.raises(KeyboardInterrupt):  # no stop pending: Ctrl-C does what it did before
                os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # recorded: the step in progress goes on
            os.kill(os.getpid(), signal.SIGUSR1)  # another warning changes nothing
            assert preemption.first == signal.SIGTERM and not preemption.halted
            with pytest.raises(StopAtOnce) as halt:
                os.kill(os.getpid(), signal.SIGINT)
            assert (halt.value.signum, halt.value.first, halt.value.grace) == (signal.SIGINT, signal.SIGTERM, None)
            os.kill(os.getpid(), signal.SIGTERM)  # stopping already: a third signal does not cut that short
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    with Preemption(grace_seconds=0), pytest.raises(StopAtOnce) as halt:
        os.kill(os.getpid(), signal.SIGTERM)
    assert halt.value.grace == 0


def test_the_grace_timer_interrupts_a_wait_and_never_fires_once_the_run_is_over(survives_signals):
    with pytest.raises(StopAtOnce) as halt, Preemption(grace_seconds=0.2):
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(120)  # a blocking wait in the main thread, as on a served teacher's answer
    assert (halt.value.signum, halt.value.grace) == (signal.SIGTERM, 0.2)
    with Preemption(grace_seconds=0.2):  # the run ends before its grace period does
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.6)  # a SIGTERM from the timer now would meet the fixture's handler and fail the test


def test_the_same_sigterm_heard_twice_at_once_is_one_request_not_a_second(survives_signals, monkeypatch):
    # Slurm signals every process of the job and the launcher forwards it too: a worker hears it twice, ms apart
    import cdistill.preemption

    monkeypatch.setattr(cdistill.preemption, "ECHO_SECONDS", 0.5)
    with Preemption(grace_seconds=None) as preemption:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the echo: the step in progress still goes on
        assert preemption.first == signal.SIGTERM and not preemption.halted
        time.sleep(0.6)
        with pytest.raises(StopAtOnce):  # past the window, a SIGTERM is a second request
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_second_sigterm_while_the_stop_writes_its_checkpoint_leaves_the_one_before_whole(
        tmp_path, cache, monkeypatch, survives_signals):
    import cdistill.checkpoint as ck

    signal_during(monkeypatch, "train_step", call=3)  # the stop's checkpoint of step 3 is then written
    real = ck.write_checksums

    def second_signal(path):
        if path.name.endswith("step-000003"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path)

    monkeypatch.setattr(ck, "write_checksums", second_signal)
    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=4", "checkpoint.every=2", "eval.at_start=false", cache=cache)
    with pytest.raises(StoppedAtOnce) as stopped:
        train(cfg, run)
    ckpt = run / "checkpoints" / "step-000002"
    assert str(stopped.value) == (f"stopped by a second SIGTERM without finishing step 3; checkpoint {ckpt} (step 2) "
                                  f"is the newest: the same command with hydra.run.dir={run} continues from it")
    assert stopped.value.exit_code == 75 and sorted(os.listdir(run / "checkpoints")) == ["step-000002"]
    assert ck.damage(ckpt) is None and requeued(run, cfg)
    assert json.loads((run / MARKER).read_text()) == {"signal": "SIGTERM", "step": 2, "checkpoint": str(ckpt),
                                                      "command": command_of(cfg)}


@pytest.mark.parametrize(("halt", "doing", "done", "ckpt", "submitit", "code", "said"), [
    ((signal.SIGTERM, signal.SIGTERM, 0), "set-up", 0, None, False, 75,
     "SIGTERM (checkpoint.grace_seconds=0: at once) without finishing set-up; no checkpoint yet: the same command "
     "with hydra.run.dir=R starts it"),
    ((signal.SIGTERM, signal.SIGUSR2, None), "step 7", 6, "R/checkpoints/step-000005", True, 75,
     "SIGTERM after SIGUSR2 without finishing step 7; checkpoint R/checkpoints/step-000005 (step 5) is the newest: "
     "handed to submitit to requeue the job, which continues from it"),
    ((signal.SIGINT, signal.SIGUSR1, None), "the final save and evaluation", 4, None, False, 130,
     "SIGINT after SIGUSR1 without finishing the final save and evaluation; no checkpoint, so steps 1-4 are lost: "
     "overwrite=true starts the run over"),
])
def test_a_stop_at_once_says_what_was_left_unfinished_and_what_a_rerun_continues_from(
        halt, doing, done, ckpt, submitit, code, said):
    stopped = StoppedAtOnce(StopAtOnce(*halt), doing, done, ckpt and Path(ckpt), Path("R"),
                            hand_over=(lambda: None) if submitit else None)
    assert (stopped.exit_code, str(stopped)) == (code, f"stopped by {said}")

# Run by `python -c`: the CLI's train command with step HANG never ending. It stands for a rollout that does not
# end (rollout.max_new_tokens=100000): like generate() between tokens, the loop comes back to Python all the time.
NEVER_ENDS = """
import sys, time
import cdistill.train as tr
from cdistill.cli import main
real, hang = tr.train_step, int(sys.argv[1])
def train_step(run, state, step):
    if step == hang:
        sys.stderr.write(f"step {step} never ends\\n")
        sys.stderr.flush()
        while True:
            time.sleep(0.05)
    return real(run, state, step)
tr.train_step = train_step
main(sys.argv[2:])
"""


def never_ending(tmp_path: Path, cache: Path, hang: int, *overrides: str) -> tuple[subprocess.Popen, Path, Path]:
    """(the process, its run directory, its stderr): a CLI run whose step ``hang`` never ends."""
    run, err = tmp_path / "run", tmp_path / "stderr.txt"
    args = [*TINY, "eval.at_start=false", f"paths.cache={cache}", f"hydra.run.dir={run}", *overrides]
    with err.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", NEVER_ENDS, str(hang), "train", *args], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=fh, text=True)
    return proc, run, err


def wait_for_line(proc: subprocess.Popen, err: Path, text: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while text not in err.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no {text!r} (exit {proc.returncode}): {err.read_text()[-3000:]}")
        time.sleep(0.05)


def ended(proc: subprocess.Popen, err: Path) -> tuple[int, str]:
    """(exit code, the one line that says why it stopped), failing the test if the run keeps waiting."""
    try:
        proc.wait(timeout=120)  # generous on a busy machine: the point is that it ends without SIGKILL
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running 120 s after the stop: {err.read_text()[-3000:]}") from None
    (line,) = [ln for ln in err.read_text().splitlines() if ln.startswith("cdistill: stopped")]
    return proc.returncode, line


def intact_checkpoints(run: Path) -> list[str]:
    """The checkpoints' names, after checking that every one is whole and that no partial one is left."""
    found = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert all(name.startswith("step-") and damage(run / "checkpoints" / name) is None for name in found), found
    return found


def test_a_second_sigterm_stops_a_step_that_never_ends_and_the_same_command_continues_from_the_last_checkpoint(
        tmp_path, cache):
    overrides = ["optim.steps=4", "checkpoint.every=1", "checkpoint.grace_seconds=null"]  # no limit: only signals
    proc, run, err = never_ending(tmp_path, cache, 3, *overrides)
    wait_for_line(proc, err, "step 3 never ends")
    os.kill(proc.pid, signal.SIGTERM)
    wait_for_line(proc, err, "cdistill: SIGTERM received", timeout=120)
    time.sleep(1)
    assert proc.poll() is None  # the first one waits for the step
    os.kill(proc.pid, signal.SIGTERM)
    code, line = ended(proc, err)
    ckpt = run / "checkpoints" / "step-000002"
    assert (code, line) == (75, f"cdistill: stopped by a second SIGTERM without finishing step 3; checkpoint {ckpt} "
                                f"(step 2) is the newest: the same command with hydra.run.dir={run} continues from it")
    assert intact_checkpoints(run) == ["step-000001", "step-000002"]  # none written in the middle of the step
    marker = json.loads((run / MARKER).read_text())
    assert (marker["signal"], marker["step"], marker["checkpoint"]) == ("SIGTERM", 2, str(ckpt))

    again = subprocess.run([sys.executable, "-m", "cdistill.cli", "train", *TINY, "eval.at_start=false",
                            f"paths.cache={cache}", f"hydra.run.dir={run}", *overrides],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {ckpt} at step 3" in again.stdout + again.stderr
    steps = [r["step"] for r in records(run) if "loss" in r]
    assert steps == [1, 2, 3, 4] and (run / "summary.json").is_file() and not (run / MARKER).exists()


def test_sigterm_stops_a_step_that_never_ends_by_itself_once_its_grace_period_is_over(tmp_path, cache):
    proc, run, err = never_ending(tmp_path, cache, 2, "optim.steps=3", "checkpoint.every=0",
                                  "checkpoint.grace_seconds=2")
    wait_for_line(proc, err, "step 2 never ends")
    os.kill(proc.pid, signal.SIGTERM)
    code, line = ended(proc, err)
    # no checkpoint to continue from: no marker (the same command is refused instead of starting over unasked),
    # and the exit status of a process that SIGTERM ended
    assert (code, line) == (128 + signal.SIGTERM, "cdistill: stopped by SIGTERM without finishing step 2 in its "
                            "grace period (checkpoint.grace_seconds=2); no checkpoint, so step 1 is lost: "
                            "overwrite=true starts the run over")
    assert "at most 2 s: checkpoint.grace_seconds" in err.read_text()
    assert not (run / MARKER).exists() and not (run / "checkpoints").exists()


def test_sigint_after_sigterm_stops_a_step_that_never_ends_at_once(tmp_path, cache):
    proc, run, err = never_ending(tmp_path, cache, 2, "optim.steps=3", "checkpoint.every=1",
                                  "checkpoint.grace_seconds=null")
    wait_for_line(proc, err, "step 2 never ends")
    os.kill(proc.pid, signal.SIGTERM)
    wait_for_line(proc, err, "cdistill: SIGTERM received", timeout=120)
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
    code, line = ended(proc, err)
    ckpt = run / "checkpoints" / "step-000001"
    assert (code, line) == (75, f"cdistill: stopped by SIGINT after SIGTERM without finishing step 2; checkpoint "
                                f"{ckpt} (step 1) is the newest: the same command with hydra.run.dir={run} "
                                "continues from it")
    assert intact_checkpoints(run) == ["step-000001"] and "KeyboardInterrupt" not in err.read_text()
    assert json.loads((run / MARKER).read_text())["checkpoint"] == str(ckpt)


def test_a_stop_at_once_just_outside_the_loop_is_one_line_not_a_traceback(capfd):
    # grace_seconds=0 between the handlers' install and the loop, or a signal while they are restored
    from omegaconf import OmegaConf

    from cdistill.cli import guarded

    @guarded
    def command(cfg):
        raise StopAtOnce(signal.SIGTERM, signal.SIGTERM, 0.0)

    with pytest.raises(SystemExit) as exit_:
        command(OmegaConf.create({}))
    assert exit_.value.code == 128 + signal.SIGTERM
    assert capfd.readouterr().err.strip() == "cdistill: stopped by SIGTERM at once, outside a training step"
