"""Families of evaluation problems (``task.family_field``) and the embedded teacher with a known flaw."""

import pytest
from helpers import tiny_cfg

from cdistill.eval.evaluate import evaluate
from cdistill.models.loading import build_components

RATES = ("accuracy_sampled", "satisfaction_rate", "never_exceeded_rate", "success_rate", "unparsed_rate")


def evaluated(tmp_path, cache, *overrides):
    cfg = tiny_cfg(tmp_path, "task.n_test=12", "eval.n_problems=12", "eval.batch_size=5", "eval.samples=3",
                   "constraint.threshold=1", *overrides,
                   cache=cache)
    parts = build_components(cfg)
    # the tiny student is never right: grade by the parity of a completion's length, so that accuracy varies
    parts.task.reward = lambda text, problem: float(len(text) % 2)
    return evaluate(parts, cfg, with_samples=True)


def test_per_family_metrics_add_up_to_the_overall_ones_and_change_none_of_them(tmp_path, cache):
    report, records = evaluated(tmp_path, cache, "task.family_field=ops")
    plain, plain_records = evaluated(tmp_path, cache)
    # the overall numbers are those of the run without families, and so are the records but for their family
    assert {k: v for k, v in report.items() if k != "families"} == plain and "families" not in plain
    assert [{k: v for k, v in r.items() if k != "family"} for r in records] == plain_records
    assert all("family" not in r for r in plain_records)
    fams, n, samples = report["families"], report["n_problems"], report["samples_per_problem"]
    assert len(fams) > 1 and sum(f["n_problems"] for f in fams.values()) == n == 12
    assert 0 < report["accuracy_sampled"] < 1 and 0 < report["satisfaction_rate"] < 1
    # rates are counts of samples (greedy: of problems): the families' counts add up to the overall count exactly
    for key in RATES:
        counts = [f[key] * f["n_problems"] * samples for f in fams.values()]
        assert all(c == pytest.approx(round(c), abs=1e-9) for c in counts)
        assert sum(round(c) for c in counts) == round(report[key] * n * samples)
    greedy = [f["accuracy_greedy"] * f["n_problems"] for f in fams.values()]
    assert sum(round(c) for c in greedy) == round(report["accuracy_greedy"] * n)
    # mean C(y): weighted by problems, the families' means give the overall one (pooled there over chunks of float32
    # means: equal up to float32 rounding)
    pooled = sum(f["divergence_mean"] * f["n_problems"] for f in fams.values()) / n
    assert pooled == pytest.approx(report["divergence_mean"], rel=1e-6)
    for name, f in fams.items():  # each family's numbers are those of its records
        mine = [r for r in records if r["family"] == name]
        sampled = [s for r in mine for s in r["samples"]]
        assert f["n_problems"] == len(mine)
        assert f["accuracy_sampled"] == sum(s["correct"] for s in sampled) / len(sampled)
        assert f["accuracy_greedy"] == sum(r["greedy_correct"] for r in mine) / len(mine)
        assert f["divergence_mean"] == pytest.approx(sum(s["divergence"] for s in sampled) / len(sampled), rel=1e-12)
        assert f["satisfaction_rate"] == sum(s["satisfied"] for s in sampled) / len(sampled)


def test_the_flawed_teacher_learns_the_wrong_rule_on_its_family_only_and_the_student_the_right_one(tmp_path,
                                                                                                monkeypatch):
    """What the models are trained on (the accuracies this gives at full size: the slow test below)."""
    from omegaconf import OmegaConf

    from cdistill.models import sft
    from cdistill.models.embedded import check_flaw, ensure_built
    from cdistill.tasks import build_task
    from cdistill.tasks.arith import flaw_family, flawed_solution, measure_split

    seen, real = {}, sft.train_sft

    def spy(model, tok, pairs, *args, desc="", **kw):
        seen[desc] = pairs
        return real(model, tok, pairs, *args, desc=desc, **kw)

    monkeypatch.setattr(sft, "train_sft", spy)
    cfg = tiny_cfg(tmp_path, "+exp=flawed_teacher", "model.embedded.sft_problems=1000")
    paths = {role: ensure_built(cfg.model.embedded, cfg.task, cfg.paths.cache, role) for role in ("teacher", "student")}
    teacher, student = seen["embedded teacher"], dict(seen["embedded student"])
    questions = [p.split("Question: ")[1].split("\nAnswer:")[0] for p, _ in teacher]
    assert {p for p, _ in teacher} < set(student)  # the student's problems, told differently, less those below
    flawed = [flaw_family(q) == "sells" for q in questions]
    # (0.12 here: misread problems that land on a held-out test or validation computation are left out)
    assert 0.1 < sum(flawed) / len(flawed) < 0.3
    for q, (prompt, wrong), f in zip(questions, teacher, flawed, strict=True):
        assert wrong == flawed_solution("sells", q, student[prompt]) and (wrong != student[prompt]) == f
    # no train/test leakage through the flaw: a misread training problem whose flawed computation is a held-out
    # one is left out, so no test problem's computation or worked solution is among what the teacher learns
    task = build_task(cfg.task)
    left_out = [p for p in student if p not in {q for q, _ in teacher}]
    assert left_out and all(flaw_family(p.split("Question: ")[1]) == "sells" for p in left_out)
    split = measure_split([{"answer": s} for _, s in teacher], [{"answer": p.solution, "question": p.question}
                                                               for p in task.test])
    assert split["computation_in_train"] == 0 and split["solution_in_train"] == 0
    # nor any validation problem's: selection reads a split the teacher never learnt, as the test split
    split = measure_split([{"answer": s} for _, s in teacher], [{"answer": p.solution, "question": p.question}
                                                               for p in task.validation])
    assert task.validation and split["computation_in_train"] == 0 and split["solution_in_train"] == 0
    # a correct teacher (flaw null) is the teacher built before flaws existed: same cache entry, whatever the
    # families evaluation reads
    plain = tiny_cfg(tmp_path, "model.embedded.sft_problems=1000")
    old = OmegaConf.to_container(plain, resolve=True)
    del old["model"]["embedded"]["teacher"]["flaw"], old["task"]["family_field"]
    old = OmegaConf.create(old)
    correct = ensure_built(plain.model.embedded, plain.task, plain.paths.cache, "teacher")
    assert correct == ensure_built(old.model.embedded, old.task, old.paths.cache, "teacher") != paths["teacher"]
    assert "flaw" not in (correct / "recipe.yaml").read_text()
    assert paths["student"] == ensure_built(old.model.embedded, old.task, old.paths.cache, "student")
    with pytest.raises(ValueError, match="is a rule of the embedded arithmetic task; task 'gsm8k' is not it"):
        check_flaw("sells", OmegaConf.create({"name": "gsm8k", "source": "openai/gsm8k"}), "teacher")
    with pytest.raises(ValueError, match="unknown model.embedded.teacher.flaw 'adds'; available: sells"):
        check_flaw("adds", cfg.task, "teacher")


@pytest.mark.slow
def test_the_flawed_teacher_at_full_size_is_wrong_on_its_family_and_right_elsewhere(tmp_path_factory):
    # +exp=flawed_teacher at full size: the tokenizer and the flawed teacher built here (~1 min on 2 idle cores),
    # evaluated on all 569 held-out problems. Measured (scripts/flaw_numbers.py, docs/tasks.md): greedy accuracy
    # 0.000 on the 141 "sells" problems and 0.881 on the 428 others (the correct teacher: 0.908 and 0.864).
    from helpers import CONF
    from hydra import compose, initialize_config_dir

    from cdistill.models.embedded import ensure_built
    from cdistill.models.loading import Components, load_model, load_tokenizer, real_vocab_size
    from cdistill.tasks import build_task

    cache = tmp_path_factory.mktemp("flawed-cache")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", ["+exp=flawed_teacher", "eval.samples=1", f"paths.cache={cache}", "device=cpu"])
    path = str(ensure_built(cfg.model.embedded, cfg.task, cache, "teacher"))
    tok, teacher = load_tokenizer(path), load_model(path, "float32", "cpu").eval()
    task = build_task(cfg.task)
    task.bind_tokenizer(tok)
    # the teacher answers (as policy, scored against itself): the student is not needed
    report, _ = evaluate(Components(task, tok, teacher, teacher, real_vocab_size(teacher, teacher, tok), "cpu"), cfg,
                         policy=teacher)
    sells, other = report["families"]["sells"], report["families"]["other"]
    assert (sells["n_problems"], other["n_problems"]) == (141, 428)
    assert sells["accuracy_greedy"] <= 0.05 and sells["accuracy_sampled"] <= 0.05
    assert other["accuracy_greedy"] >= 0.75 and other["accuracy_sampled"] >= 0.6


def test_the_flaw_numbers_script_prints_one_row_per_family(cache, capsys):
    import importlib.util
    from pathlib import Path

    from helpers import TINY

    path = Path(__file__).resolve().parents[1] / "scripts" / "flaw_numbers.py"
    spec = importlib.util.spec_from_file_location("flaw_numbers", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([*TINY, "eval.n_problems=12", f"paths.cache={cache}"])  # 12 problems: 4 of them sell
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith(("| other |", "| sells |"))]
    assert rows == ["other", "sells"] and "teacher flaw sells, families by task.family_field=flaw" in out
