"""``cdistill protocol`` end to end at tiny sizes: tuning reads validation only (a garbled test split selects the
same settings), the finals read test, a rerun continues the study instead of training again, and a study declared
otherwise in the same directory is refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
RUN_SIZES = [o for o in TINY if not o.startswith("optim.steps=")]  # a study's steps are its own setting (steps=2)

# Every process of a study (the protocol and each `cdistill train` it starts) imports this through PYTHONPATH: the
# embedded task's test split keeps its questions' computations out of training as before, but every test problem
# is replaced by another question with another answer.
GARBLE = '''
import cdistill.tasks.arith as arith

_split = arith.split


def garbled(*args, **kwargs):
    questions, rows = _split(*args, **kwargs)
    return questions, [{**r, "question": r["question"] + " Then it snows on 9 of them.",
                        "answer": "9 + 9 = 18\\n#### 18"} for r in rows]


arith.split = garbled
'''


def protocol(tmp_path, study, cache, *settings, garble=False, extra=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if garble:
        (tmp_path / "garble").mkdir(exist_ok=True)
        (tmp_path / "garble" / "sitecustomize.py").write_text(GARBLE)
        env["PYTHONPATH"] = str(tmp_path / "garble")
    argv = [sys.executable, "-m", "cdistill.cli", "protocol", f"dir={study}", "methods=[cmdp,soft_penalty]",
            "trials=2", "steps=2", "final_seeds=[1,2]", "verdicts.comparisons=[[cmdp,soft_penalty]]", *settings,
            "--", *RUN_SIZES, f"paths.cache={cache}", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)


def without_clock(selection: dict) -> dict:
    """selection.json without the trials' wall-clock seconds."""
    for s in selection.values():
        for t in s["trials"]:
            t.pop("train_seconds")
    return selection


def finals_divergence(study: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["divergence_mean"]
            for p in sorted((study / "finals").glob("*/summary.json"))}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    cache = tmp / "cache"
    plain = protocol(tmp, tmp / "plain", cache)
    assert plain.returncode == 0, plain.stderr[-3000:]
    # its own models, built under the garbled split: a model build that read the test split would differ too
    garbled = protocol(tmp, tmp / "garbled", tmp / "cache_garbled", garble=True)
    assert garbled.returncode == 0, garbled.stderr[-3000:]
    return tmp, cache, plain


def test_selection_never_reads_the_test_split_a_garbled_one_selects_the_same_settings(studies):
    tmp, _, _ = studies
    plain, garbled = (without_clock(json.loads((tmp / name / "selection.json").read_text()))
                      for name in ("plain", "garbled"))
    assert plain == garbled  # every trial's validation numbers, and each method's choice
    # the garbling is visible wherever test is read: the finals, evaluated on it, measured other problems
    assert finals_divergence(tmp / "plain") != finals_divergence(tmp / "garbled")
    for trial in (tmp / "plain" / "tuning").glob("*/trial*/summary.json"):
        assert json.loads(trial.read_text())["split"] == "validation"
    for final in (tmp / "plain" / "finals").glob("*/summary.json"):
        assert "split" not in json.loads(final.read_text())  # read on test


def test_a_study_tunes_selects_trains_fresh_seeds_and_reports_only_its_declared_verdicts(studies):
    tmp, _, run = studies
    study = tmp / "plain"
    declared = yaml.safe_load((study / "protocol.yaml").read_text())
    assert declared["trials"] == 2 and declared["final_seeds"] == [1, 2]
    for method in ("cmdp", "soft_penalty"):
        assert len(list((study / "tuning" / method).glob("trial*/summary.json"))) == 2
        assert sorted(p.parent.name for p in (study / "finals").glob(f"{method}_seed*/summary.json")) == [
            f"{method}_seed1", f"{method}_seed2"]
    selected = json.loads((study / "selection.json").read_text())
    cfg = yaml.safe_load((study / "finals" / "cmdp_seed1" / "config.yaml").read_text())
    for override in selected["cmdp"]["overrides"]:  # the finals train the selected settings
        key, value = override.split("=", 1)
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert str(node).lower() == value.lower() or float(node) == pytest.approx(float(value))
    md = (study / "study.md").read_text()
    assert "Rule, declared before any run: the highest validation accuracy_sampled" in md
    assert "## Declared verdicts (Holm-corrected, family-wise alpha)" in md and "cmdp" in md
    assert (study / "validation_pareto.png").stat().st_size > 1000
    assert "study finished" in run.stdout and "cost tuning" in run.stdout
    assert set(json.loads((study / "cost.json").read_text())) == {"tuning", "finals", "report"}


def test_a_rerun_continues_the_study_and_trains_nothing_again(studies):
    tmp, cache, _ = studies
    before = (tmp / "plain" / "selection.json").read_text()
    again = protocol(tmp, tmp / "plain", cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(finished before: reused)") == 8  # 2 x 2 trials and 2 x 2 final runs
    assert (tmp / "plain" / "selection.json").read_text() == before


def test_a_study_declared_otherwise_in_the_same_directory_is_refused_in_one_line(studies):
    tmp, cache, _ = studies
    other = protocol(tmp, tmp / "plain", cache, "trials=3")
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1, other.stderr[-2000:]
    assert "holds a study declared with other settings (trials differ)" in lines[0]


@pytest.mark.parametrize(("settings", "extra", "message"), [
    (["final_seeds=[0,1]"], [], "final_seeds must be fresh seeds"),
    (["verdicts.comparisons=[[cmdp,lagrangian]]"], [], "verdicts.comparisons names lagrangian, which protocol.methods"),
    (["methods=[cmdp,opd]"], [], "protocol.methods: no search space for opd"),
    (["trials=0"], [], "trials must be a whole number of at least 1"),
    # what the report would refuse only after the whole study has trained
    (["verdicts.comparisons=[[cmdp,cmdp]]"], [], "compares a method with itself"),
    (["verdicts.primary=speed"], [], "primary must be one of"),
    (["methods=[cmdp,weakest_link]", "verdicts.comparisons=[[cmdp,weakest_link]]"], [],
     "the two train on different constraints"),
    # run overrides that would contradict the declaration or fix a tuned knob
    ([], ["eval.split=validation"], "'eval.split=validation' cannot be given to a study: the protocol sets it"),
    ([], ["optim.steps=9"], "'optim.steps=9' cannot be given to a study"),
    ([], ["optim.lr=1e-3"], "'optim.lr=1e-3' cannot be given to a study: a search space tunes it"),
    (["+exp=flawed_teacher"], [], "the overrides of the runs go after --"),
])
def test_a_bad_declaration_is_refused_before_anything_runs(tmp_path, settings, extra, message):
    r = protocol(tmp_path, tmp_path / "study", tmp_path / "cache", *settings, extra=extra)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert not (tmp_path / "study" / "tuning").exists() and not (tmp_path / "cache").exists()


def test_a_tuning_sweep_scored_on_test_is_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cdistill.cli", "train", "-m", "+tune=grpo", "eval.split=test",
                        "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY,
                        f"paths.cache={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "must be scored on the validation split, never on test" in r.stderr, r.stderr[-2000:]


FAIL_FAST_LR = """
import cdistill.train as tr

_train = tr.train


def failing(cfg, run_dir):
    if cfg.optim.lr < 3e-5:  # grpo's second trial draws 2.65e-05 (its first 3.54e-05): its steps are not finite
        raise tr.TrainingError("stopped at step 1: 2 steps in a row had a non-finite loss or gradient")
    return _train(cfg, run_dir)


tr.train = failing
"""


def test_a_trial_that_cannot_train_scores_worst_and_the_study_goes_on_and_resumes(tmp_path):
    (tmp_path / "patch").mkdir()
    (tmp_path / "patch" / "sitecustomize.py").write_text(FAIL_FAST_LR)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path / "patch")}
    argv = [sys.executable, "-m", "cdistill.cli", "train", "-m", "+tune=grpo", "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "resume=auto", *TINY, f"paths.cache={tmp_path / 'cache'}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trial failed: stopped at step 1" in r.stderr and "Best value" in r.stdout + r.stderr
    assert (tmp_path / "sweep" / "trial1" / "failed.json").is_file()
    assert (tmp_path / "sweep" / "trial0" / "summary.json").is_file()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert "failed before under this configuration" in again.stdout, again.stdout[-2000:]
    from cdistill.protocol import trials_of
    from cdistill.selection import FAILED, Rule, objective, select

    trials = trials_of(tmp_path / "sweep")
    assert [t.number for t in trials] == [0, 1] and objective(trials[1].summary, Rule()) == FAILED
    assert select(trials, Rule())[0].number == 0
