"""The ``cdistill`` entry point as a user runs it: train → eval → report, and one-line errors."""

import json
import subprocess
import sys

from helpers import TINY


def cdistill(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cdistill.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_train_then_eval_then_report(tmp_path):
    run = tmp_path / "runs" / "one"
    r = cdistill("train", *TINY, f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={run}", "method=cmdp",
                 "constraint.threshold=6", "logging.wandb.enabled=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "satisfied at the end" in r.stdout and "95% interval" in r.stdout
    assert list((run / "wandb").glob("offline-run-*")), "wandb should log offline into the run directory"
    trained = json.loads((run / "eval.json").read_text())

    r = cdistill("eval", f"run_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    (out,) = (run / "eval").glob("*/eval.json")
    evaluated = json.loads(out.read_text())
    # same weights, same evaluation seed: the same samples, so the same satisfaction rate as at training's end
    assert evaluated["satisfaction_rate"] == trained["satisfaction_rate"]
    assert evaluated["divergence_mean"] == trained["divergence_mean"]
    assert f"{trained['satisfaction_rate']:.3f}" in r.stdout

    before = [(run / p).read_text() for p in ("summary.json", ".hydra/overrides.yaml")]
    r = cdistill("train", *TINY, f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={run}")
    assert r.returncode == 2 and "already holds a finished run" in r.stderr
    assert [(run / p).read_text() for p in ("summary.json", ".hydra/overrides.yaml")] == before

    r = cdistill("report", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    assert "| cmdp | - | sum of logratio <= 6 | 0 |" in r.stdout and (tmp_path / "runs" / "report.md").is_file()


def test_unknown_command_is_one_line_and_exit_2():
    r = cdistill("trian")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown command 'trian'" in r.stderr


def test_eval_of_a_missing_run_is_one_line_and_exit_2(tmp_path):
    r = cdistill("eval", f"run_dir={tmp_path / 'nope'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("cdistill: error:")
    assert "Traceback" not in r.stderr


def test_report_of_an_empty_directory_fails_clearly(tmp_path):
    r = cdistill("report", str(tmp_path))
    assert r.returncode == 2 and "no finished run" in r.stderr


def test_bad_config_values_fail_in_one_line_before_any_model_is_built(tmp_path):
    cache = tmp_path / "cache"
    for override, words in [("constraint.cost=bogus", "unknown constraint.cost 'bogus'"),
                            ("constraint.kind=max", "unknown constraint.kind 'max'"),
                            ("constraint.threshold=abc", "constraint.threshold must be a number"),
                            ("constraint.threshold=-1", "constraint.threshold must be positive"),
                            ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be a whole number")]:
        r = cdistill("train", *TINY, f"paths.cache={cache}", f"hydra.run.dir={tmp_path / 'run'}", override)
        assert r.returncode == 2, (override, r.stderr[-500:])
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("cdistill: error: ") and words in last, override
        assert "Traceback" not in r.stderr, override
    assert not cache.exists(), "validation must come before the embedded models are built"


def test_a_seed_sweep_gets_one_directory_per_job_and_reports_one_row_per_setting(tmp_path):
    sweep = tmp_path / "sweep"
    r = cdistill("train", "-m", "method=soft_penalty", "method.penalty=0.1,1", "seed=0,1,2", *TINY,
                 f"paths.cache={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    # named by what is swept, not by the fixed overrides (which would make every name the same length and unreadable)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        f"method.penalty={p},seed={s}" for p in ("0.1", "1") for s in (0, 1, 2)]
    r = cdistill("report", str(sweep))
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| soft_penalty |")]
    assert [row.split("|")[2:5] for row in rows] == [
        [" method.penalty=0.1 ", " sum of logratio, read at d = 10 ", " 0,1,2 "],
        [" method.penalty=1 ", " sum of logratio, read at d = 10 ", " 0,1,2 "]]
    assert all("[" in row.split("|")[5] for row in rows)  # sampled accuracy: a mean with its interval
    assert "6 runs in 2 groups" in r.stdout


def _listed(out: str) -> dict[str, str]:
    """``key=value`` of each setting line of a command's --help."""
    return dict(line.split()[0].split("=", 1) for line in out.splitlines() if line.startswith("  ") and "=" in line)


def test_each_commands_help_lists_its_own_settings_one_line_each_and_where_the_full_tree_is(tmp_path):
    from cdistill.schema import TABLES

    for command in ("eval", "judge", "protocol"):
        r = cdistill(command, "--help", cwd=tmp_path)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr[-2000:]
        listed = _listed(r.stdout)
        assert set(listed) == set(TABLES[command]), command  # every setting, and nothing else
        assert f"cdistill {command} [overrides] --cfg job" in r.stdout
    assert _listed(cdistill("eval", "--help").stdout)["run_dir"] == "(required)"  # not "run_dir is required"
    r = cdistill("train", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    train = _listed(r.stdout)
    assert train["constraint.threshold"] == "10.0" and train["method.name"] == '"cmdp"'
    assert not any(k.startswith(("judge", "accelerate", "run_a", "run_dir")) for k in train)  # other commands'
    assert "Hydra" not in r.stdout.splitlines()[0]  # its banner described Hydra's app, with every conf/ group
    # the settings under the overrides given with --help: another method's, another task's
    chosen = _listed(cdistill("train", "method=lagrangian", "+exp=gsm8k", "--help").stdout)
    assert chosen["method.lr"] == "0.05" and chosen["task.name"] == '"gsm8k"' and "method.penalty_on" not in chosen
    assert list(tmp_path.iterdir()) == []  # help creates no output directory


def test_a_refused_command_leaves_no_output_directory_behind(tmp_path):
    # Hydra makes outputs/runs/<time>_<method>_d<d>/ (.hydra/, cli.log) before any of cdistill's checks run
    r = cdistill("train", "optim.steps=0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "cdistill: error: optim.steps must be a whole number of at " \
                                                     "least 1, got 0", r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "notes.txt").write_text("mine\n")
    r = cdistill("eval", f"run_dir={run}", "n_problems=0", cwd=tmp_path)
    assert r.returncode == 2 and "n_problems" in r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]  # no eval/<time>/, the rest kept
    # a directory that existed before stays, with what it held, even when that is only an earlier Hydra record
    earlier = tmp_path / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / ".hydra" / "mine.yaml").write_text("a: 1\n")
    (earlier / "cli.log").write_text("earlier\n")
    r = cdistill("train", "optim.steps=0", f"hydra.run.dir={earlier}", cwd=tmp_path)
    assert r.returncode == 2 and (earlier / ".hydra" / "mine.yaml").is_file()
    assert (earlier / "cli.log").read_text().startswith("earlier\n")
    # an empty directory the user made above the run directory stays too; only what the command made goes
    (tmp_path / "mine").mkdir()
    r = cdistill("train", "optim.steps=0", f"hydra.run.dir={tmp_path / 'mine' / 'a' / 'run'}", cwd=tmp_path)
    assert r.returncode == 2 and (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


def test_eval_takes_a_checkpoint_directory_and_names_what_to_pass_otherwise(tmp_path, cache):
    from helpers import tiny_cfg

    from cdistill.checkpoint import complete
    from cdistill.train import train

    run = tmp_path / "run"
    run.mkdir()
    train(tiny_cfg(tmp_path, "checkpoint.every=1", "eval.at_start=false", cache=cache), run)
    step = complete(run)[0]  # checkpoints/step-000001: the student sits in its student/
    r = cdistill("eval", f"run_dir={run}", f"checkpoint={step}", "n_problems=2")
    assert r.returncode == 0, r.stderr[-2000:]
    (out,) = (run / "eval").glob("*/eval.json")
    assert json.loads(out.read_text())["n_problems"] == 2
    r = cdistill("eval", f"run_dir={run}", f"checkpoint={run / 'checkpoints'}")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"cdistill: error: checkpoint={run / 'checkpoints'}: no student there (no config.json); give a run's "
        "student/ directory or one of its checkpoints/step-N"), r.stderr[-2000:]
