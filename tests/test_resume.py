"""Exact resume after SIGKILL, atomic checkpoints, and the guards against non-finite steps."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import TINY, tiny_cfg
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from cdistill import checkpoint
from cdistill.train import TrainingError, train

TIMING = ("time_generate", "time_score", "time_update", "time_step", "seconds", "eval/seconds")
# a run long enough to be killed in the middle, checkpointed at every step
RUN = [*TINY, "optim.steps=6", "checkpoint.every=1", "checkpoint.keep=2", "method=lagrangian", "eval.at_start=true"]


def launch(run_dir, cache, *extra):
    cmd = [sys.executable, "-m", "cdistill.cli", "train", *RUN, f"paths.cache={cache}", f"hydra.run.dir={run_dir}",
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out


def records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights_and_metrics(tmp_path, cache):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    finished(launch(straight, cache))

    kill_after = random.Random().randint(1, 4)  # any checkpoint before the last step
    proc = launch(killed, cache)
    target = killed / "checkpoints" / f"step-{kill_after:06d}"
    deadline = time.time() + 300
    while not target.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert target.is_dir(), f"no checkpoint {target.name} appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()

    # the same command without resume is refused (it would lose the run); with resume=auto it continues
    refused = subprocess.run([sys.executable, "-m", "cdistill.cli", "train", *RUN, f"paths.cache={cache}",
                              f"hydra.run.dir={killed}"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "unfinished run; resume=auto continues it" in refused.stderr
    finished(launch(killed, cache, "resume=auto"))

    a = load_file(str(straight / "student" / "model.safetensors"))
    b = load_file(str(killed / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert records(straight) == records(killed)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    for key in ("accuracy_sampled", "accuracy_greedy", "divergence_mean", "satisfaction_rate", "method_state",
                "start_accuracy_sampled", "teacher_accuracy_sampled"):
        assert sa[key] == sb[key], key
    assert len(checkpoint.complete(killed)) == 2  # keep=2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preempted_run_checkpoints_its_step_exits_75_and_a_requeued_rerun_ends_as_an_uninterrupted_run(
        tmp_path, cache, sig):
    import os

    args = [*TINY, "optim.steps=30", "checkpoint.every=0", "method=lagrangian", "eval.at_start=true",
            f"paths.cache={cache}"]

    def command(run_dir):
        return [sys.executable, "-m", "cdistill.cli", "train", *args, f"hydra.run.dir={run_dir}"]

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert subprocess.run(command(straight), capture_output=True, timeout=600).returncode == 0
    stop_after = random.Random().randint(1, 10)
    proc = subprocess.Popen(command(stopped), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        metrics = stopped / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count('"time_step"') >= stop_after:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("cdistill: stopped by")]
    step = int(line.split("after step ")[1].split(",")[0])
    assert line.startswith(f"cdistill: stopped by {signal.Signals(sig).name} after step {step}, checkpoint ")
    assert step >= stop_after and (stopped / "checkpoints" / f"step-{step:06d}" / "checksums.json").is_file()
    assert not (stopped / "summary.json").exists()
    marker = stopped / "preempted.json"
    recorded = json.loads(marker.read_text())
    assert recorded.pop("command") and recorded == {"signal": signal.Signals(sig).name, "step": step,
                                                    "checkpoint": str(stopped / "checkpoints" / f"step-{step:06d}")}
    # the same command again continues by itself: the marker says so, or (a Slurm job killed before it could
    # write one) Slurm's requeue, which sets SLURM_RESTART_COUNT
    env = {k: v for k, v in os.environ.items() if k != "SLURM_RESTART_COUNT"}
    if sig == signal.SIGUSR1:
        marker.unlink()
        env["SLURM_RESTART_COUNT"] = "1"
    again = subprocess.run(command(stopped), capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not marker.exists()
    a = load_file(str(straight / "student" / "model.safetensors"))
    b = load_file(str(stopped / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise on CPU
    assert records(straight) == records(stopped)


def test_resume_refuses_a_checkpoint_written_under_another_config_and_names_the_settings_that_differ(tmp_path, cache):
    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=2", "checkpoint.every=1", "eval.at_start=false", cache=cache)
    train(cfg, run)
    ckpt = checkpoint.complete(run)[-1]
    other = tiny_cfg(tmp_path, "optim.steps=2", "optim.lr=1e-3", "eval.at_start=false", f"resume={ckpt}",
                     cache=cache)
    # the refusal names the setting that differs, with the value the checkpoint was written under
    with pytest.raises(checkpoint.CheckpointError, match=rf"written under a different configuration \(optim.lr: "
                       rf"{cfg.optim.lr} -> 0.001\); "):
        train(other, run)
    several = tiny_cfg(tmp_path, "optim.steps=2", "optim.lr=1e-3", "seed=7", "eval.at_start=false", f"resume={ckpt}",
                       cache=cache)
    with pytest.raises(checkpoint.CheckpointError, match=r"\(optim.lr: .* -> 0.001; seed: 0 -> 7\)"):
        train(several, run)
    # volatile keys (logging, checkpoint cadence) are not part of the fingerprint
    same = tiny_cfg(tmp_path, "optim.steps=2", "checkpoint.every=1", "logging.progress=true", f"resume={ckpt}",
                    "eval.at_start=false", cache=cache)
    assert checkpoint.load(ckpt, same)[1]["step"] == 1


def test_resume_from_a_missing_checkpoint_is_an_error_and_auto_without_one_starts_fresh(tmp_path, cache):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint there"):
        checkpoint.find(str(tmp_path / "nope"), tmp_path)
    assert checkpoint.find("auto", tmp_path) is None


def test_a_killed_checkpoint_write_leaves_no_checkpoint_behind(tmp_path, cache):
    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=3", "checkpoint.every=1", "checkpoint.keep=5", "eval.at_start=false",
                   cache=cache)
    train(cfg, run)
    assert [p.name for p in checkpoint.complete(run)] == ["step-000001", "step-000002"]
    # a write that died before its rename is a temporary directory: never picked up
    (run / "checkpoints" / ".tmp-step-000009-123").mkdir()
    assert checkpoint.find("auto", run).name == "step-000002"


def test_resume_auto_passes_over_a_damaged_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path, cache, caplog):
    import shutil

    straight = tmp_path / "straight"
    straight.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=4", "checkpoint.every=1", "checkpoint.keep=5", "eval.at_start=false",
                   cache=cache)
    train(cfg, straight)
    # the same run "killed" after its step-3 checkpoint, whose trainer.pt was then cut short (a full disk, a bad copy)
    broken = tmp_path / "broken"
    shutil.copytree(straight, broken)
    for name in ("summary.json", "eval.json", "eval_samples.jsonl", "student"):
        shutil.rmtree(broken / name) if (broken / name).is_dir() else (broken / name).unlink()
    newest = broken / "checkpoints" / "step-000003"
    data = (newest / "trainer.pt").read_bytes()
    (newest / "trainer.pt").write_bytes(data[: len(data) // 2])
    assert "trainer.pt does not match its checksum" in checkpoint.damage(newest)
    with pytest.raises(checkpoint.CheckpointError, match=r"the checkpoint is damaged \(trainer.pt does not match"):
        checkpoint.find(str(newest), broken)  # named explicitly: refused in one line
    with caplog.at_level("WARNING", logger="cdistill.checkpoint"):
        train(tiny_cfg(tmp_path, "optim.steps=4", "checkpoint.every=1", "checkpoint.keep=5", "eval.at_start=false",
                       "resume=auto", cache=cache), broken)
    assert any("step-000003 is damaged" in r.message and "trying an older one" in r.message for r in caplog.records)
    # the damaged one was moved aside (so that keeping the newest N never counts it); step 3 was written anew
    assert (broken / "checkpoints" / ".damaged-step-000003").is_dir()
    assert checkpoint.damage(broken / "checkpoints" / "step-000003") is None
    a = load_file(str(straight / "student" / "model.safetensors"))
    b = load_file(str(broken / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from step 2: the same weights, bitwise
    assert records(straight) == records(broken)


def test_resume_auto_refuses_when_every_checkpoint_is_damaged(tmp_path, cache):
    run = tmp_path / "run"
    run.mkdir()
    train(tiny_cfg(tmp_path, "optim.steps=2", "checkpoint.every=1", "eval.at_start=false", cache=cache), run)
    (only,) = checkpoint.complete(run)
    (only / "state.json").write_text((only / "state.json").read_text() + " ")
    with pytest.raises(checkpoint.CheckpointError, match="every checkpoint under .* is damaged"):
        checkpoint.find("auto", run)
    (only / "checksums.json").unlink()  # written by an older cdistill: cannot be checked, so trusted
    assert checkpoint.find("auto", run) == only


def nan_loss_at(steps_to_poison):
    """Patch for ``clipped_policy_loss`` that returns a NaN loss while the step counter is in the set."""
    import cdistill.train as tr

    real, calls = tr.clipped_policy_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        loss, st = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in steps_to_poison else loss), st

    return poisoned


def test_a_step_with_a_nan_loss_is_skipped_logged_and_leaves_the_weights_alone(tmp_path, cache, monkeypatch):
    import cdistill.train as tr

    # one micro-batch per step at these sizes: call n is step n
    monkeypatch.setattr(tr, "clipped_policy_loss", nan_loss_at({2, 4}))
    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=4", "checkpoint.every=1", "checkpoint.keep=5", "eval.at_start=false",
                   "optim.micro_batch=64", "optim.lr=1e-2", "constraint.threshold=1", cache=cache)
    summary = train(cfg, run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert [s["skipped_updates"] for s in steps] == [0, 1, 0, 1] and summary["bad_steps"] == 2
    # no checkpoint is written at a bad step
    assert [p.name for p in checkpoint.complete(run)] == ["step-000001", "step-000003"]
    # the last (skipped) step left the weights as step 3 made them; step 3 itself did change them
    at = {name: AutoModelForCausalLM.from_pretrained(run / "checkpoints" / name / "student").state_dict()
          for name in ("step-000001", "step-000003")}
    final = AutoModelForCausalLM.from_pretrained(run / "student").state_dict()
    assert all(torch.equal(final[k], at["step-000003"][k]) for k in final)
    assert any(not torch.equal(final[k], at["step-000001"][k]) for k in final)


def test_too_many_bad_steps_in_a_row_stop_the_run_with_the_last_good_checkpoint(tmp_path, cache, monkeypatch):
    import cdistill.train as tr

    monkeypatch.setattr(tr, "clipped_policy_loss", nan_loss_at({2, 3, 4, 5}))
    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg(tmp_path, "optim.steps=6", "checkpoint.every=1", "guards.max_bad_steps=2", "eval.at_start=false",
                   "optim.micro_batch=64", cache=cache)
    with pytest.raises(TrainingError, match=r"stopped at step 3: 2 steps in a row .* last good checkpoint is .*"
                                            r"step-000001"):
        train(cfg, run)
    assert checkpoint.find("auto", run).name == "step-000001" and not (run / "summary.json").exists()


def test_teacher_out_of_memory_names_the_remedy(tmp_path, cache, monkeypatch):
    from cdistill.models.loading import build_components
    from cdistill.runtime import ResourceError

    cfg = tiny_cfg(tmp_path, "eval.at_start=false", cache=cache)
    parts = build_components(cfg)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(parts.teacher, "get_decoder", lambda: oom)
    monkeypatch.setattr("cdistill.train.build_components", lambda *a, **k: parts)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ResourceError, match="teacher forward .* ran out of GPU memory .* lower scoring.micro_batch"):
        train(cfg, run)


def no_space(*args, **kwargs):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, cache, monkeypatch):
    from cdistill.runtime import ResourceError

    run = tmp_path / "run"
    run.mkdir()
    real, calls = torch.save, {"n": 0}

    def save_until_full(obj, path, *args, **kwargs):
        calls["n"] += 1
        if str(path).endswith("trainer.pt") and ".tmp-step-000002" in str(path):
            no_space()
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    cfg = tiny_cfg(tmp_path, "optim.steps=4", "checkpoint.every=1", "checkpoint.keep=1", "eval.at_start=false",
                   cache=cache)
    with pytest.raises(ResourceError) as e:
        train(cfg, run)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"no space left on the device of {run / 'checkpoints'} "
                                                      "while writing checkpoint step-000002 (it needs about ")
    assert "MiB free); free some space or point the run elsewhere" in message
    (kept,) = checkpoint.complete(run)  # the step-1 checkpoint survives, intact; no partial one is left
    assert kept.name == "step-000001" and checkpoint.damage(kept) is None
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    assert not (run / "summary.json").exists()


def test_a_full_disk_is_recognised_however_the_writer_says_it(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from cdistill.runtime import ResourceError, disk_space_hint

    with pytest.raises(ResourceError, match="no space left"):  # safetensors' wording
        with disk_space_hint(tmp_path, "weights"):
            raise RuntimeError("I/O error: No space left on device (os error 28)")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(ResourceError, match=r"it needs about 5 MiB, 0 MiB free"):  # torch's zip writer: no errno
        with disk_space_hint(tmp_path, "trainer.pt", 5 * 2**20):
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="something else"):  # any other failure is left alone
        with disk_space_hint(tmp_path, "trainer.pt", 5 * 2**20):
            raise RuntimeError("something else")


def test_a_full_disk_while_saving_the_final_student_never_leaves_a_finished_looking_run(tmp_path, cache, monkeypatch):
    import cdistill.train as tr
    from cdistill.runtime import ResourceError

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(tr, "save_student", no_space)
    with pytest.raises(ResourceError, match=r"while writing the final student \(it needs about \d+ MiB"):
        train(tiny_cfg(tmp_path, "optim.steps=2", "eval.at_start=false", cache=cache), run)
    assert not (run / "summary.json").exists()
