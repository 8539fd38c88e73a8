"""Tasks and the verifier: the embedded generator, real GSM8K / MATH-500 rows, answer checking."""

import json
import re
from pathlib import Path

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir

from cdistill.tasks import build_task
from cdistill.tasks.arith import all_computations, computation, measure_split, render, split, train_rows
from cdistill.tasks.base import TaskError, read_jsonl
from cdistill.tasks.verifier import answers_match, extract_answer, grade

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="../shared/data not present")


def task_cfg(name, *overrides):
    # the datasets' tests use files of a few rows: no validation slice unless a test asks for one
    no_slice = [] if name == "arith" else ["task.n_validation=0"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", [f"task={name}", *no_slice, *overrides]).task


def test_arith_solutions_are_correct_gsm8k_style_worked_lines():
    import random

    rng = random.Random(1)
    for comp in rng.sample(all_computations(1, 3, 9), 300):
        row = render(rng, comp)
        assert computation(row) == comp
        *lines, final = row["answer"].split("\n")
        value = None
        for line in lines:
            a, op, b, eq, c = line.split()
            assert eq == "=" and int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) and int(c) >= 0
            assert value is None or int(a) == value
            value = int(c)
        assert final == f"#### {value}"
        assert grade(row["answer"], str(value)) == 1.0


def test_arith_held_out_split_is_fixed_and_never_trained_on():
    held, rows = split(0, 50, 1, 2, 9)
    held2, rows2 = split(0, 50, 1, 2, 9)
    assert rows == rows2 and held == held2 and len({r["question"] for r in rows}) == 50
    train = train_rows(0, 2000, set(held), 1, 2, 9)
    assert train == train_rows(0, 2000, set(held), 1, 2, 9)
    assert not {r["question"] for r in train} & set(held)
    assert not {computation(r) for r in train} & {computation(r) for r in rows}


def test_arith_split_holds_out_computations_not_wordings():
    """At the default size no test computation (start value + (op, operand) steps) ever occurs in training."""
    cfg = task_cfg("arith")
    assert (cfg.n_test, cfg.n_train, cfg.held_out_fraction) == (0, 20000, 0.3)
    d = cfg.difficulty
    held, test = split(cfg.seed, cfg.n_test, d.min_steps, d.max_steps, d.max_operand, cfg.held_out_fraction)
    train = train_rows(cfg.seed, cfg.n_train, set(held), d.min_steps, d.max_steps, d.max_operand,
                       cfg.held_out_fraction)
    m = measure_split(train, test, cfg.seed, cfg.held_out_fraction, (d.min_steps, d.max_steps, d.max_operand))
    assert m["computation_in_train"] == 0.0 and m["solution_in_train"] == 0.0
    # one question for each held-out computation: every test problem is an independent draw
    assert m["distinct_test_questions"] == m["distinct_test_computations"] == m["held_out_computations"] == len(test)
    assert m["effective_test_size"] == len(test) == 569
    assert 0.25 < m["held_out_computations"] / m["computations"] < 0.35
    # another task.seed holds out other computations
    _, other = split(cfg.seed + 1, 200, d.min_steps, d.max_steps, d.max_operand, cfg.held_out_fraction)
    assert {computation(r) for r in other} != {computation(r) for r in test[:200]}


def test_arith_build_task_uses_the_computation_split():
    task = build_task(task_cfg("arith", "task.n_train=3000", "task.n_test=300"))
    assert len(task.test) == 300 and len({p.question for p in task.test}) == 300
    test_comps = {computation({"answer": p.solution}) for p in task.test}
    assert not test_comps & {computation({"answer": p.solution}) for p in task.train}
    assert task.extraction == "strict"


def test_arith_impossible_split_is_a_clear_error():
    with pytest.raises(ValueError, match="lower task.n_test to at most"):
        split(0, 500, 1, 1, 1)
    with pytest.raises(TaskError, match="held_out_fraction must be between 0 and 1"):
        build_task(task_cfg("arith", "task.held_out_fraction=1.0"))


def test_arith_difficulty_knob_sets_the_number_of_steps():
    steps = {r["answer"].count("\n") for r in train_rows(0, 50, set(), 3, 3, 4)}
    assert steps == {3}
    # every computation is reachable and none goes below zero: 1-step, operands 1..2: 1+1 1+2 2+1 2+2 1-1 2-1 2-2
    assert sorted(all_computations(1, 1, 2)) == [(1, (("+", 1),)), (1, (("+", 2),)), (1, (("-", 1),)),
                                                 (2, (("+", 1),)), (2, (("+", 2),)), (2, (("-", 1),)), (2, (("-", 2),))]


@pytest.mark.parametrize(("text", "mode", "fmt", "want"), [
    ("2 + 3 = 5\n#### 5", "strict", "gsm8k", "5"), ("so \\boxed{\\frac{1}{2}} done", "strict", "math", "\\frac{1}{2}"),
    ("so \\boxed{\\frac{1}{2}} done", "strict", "gsm8k", None), ("so \\boxed{\\frac{1}{2}} done", "flexible", "gsm8k",
                                                                "\\frac{1}{2}"),
    ("no answer here", "flexible", "gsm8k", None), ("#### 1,000\nmore", "strict", "gsm8k", "1000"),
    ("\\boxed{a} then \\boxed{b}", "strict", "math", "b"), ("#### 4\n#### 5", "strict", "gsm8k", "4"),
])
def test_extract_answer(text, mode, fmt, want):
    assert extract_answer(text, mode, fmt) == want


@pytest.mark.parametrize(("pred", "gold", "ok"), [
    ("1,000", "1000", True), ("5", "5.0", True), ("$18", "18", True), ("17", "18", False), (None, "3", False),
    ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{3}", "0.5", False),
])
def test_answers_match_accepts_equivalent_forms_and_rejects_others(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_malformed_jsonl_reports_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "a", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(p)
    with pytest.raises(TaskError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TaskError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl")


@needs_data
def test_every_gsm8k_test_gold_answer_parses_and_verifies_against_itself():
    cfg = task_cfg("gsm8k", f"task.train_source={DATA / 'gsm8k' / 'train.jsonl'}",
                   f"task.test_source={DATA / 'gsm8k' / 'test.jsonl'}", "task.n_test=0")
    task = build_task(cfg)
    assert len(task.test) == 1319
    for p in task.test:
        assert re.fullmatch(r"-?\d+(\.\d+)?", p.gold), p.gold
        assert task.reward(f"...\n#### {p.gold}", p) == 1.0
        assert task.reward(f"#### {int(float(p.gold)) + 1}", p) == 0.0


@needs_data
def test_math500_rows_load_with_their_answers():
    cfg = task_cfg("math500", f"task.source={DATA / 'math500' / 'test.jsonl'}", "task.n_test=0",
                   "task.allow_train_on_test=true")
    task = build_task(cfg)
    assert len(task.test) == 500
    first = json.loads((DATA / "math500" / "test.jsonl").read_text().splitlines()[0])
    match = [p for p in task.test if p.question == first["problem"]]
    assert match and match[0].gold == first["answer"]
    assert "Problem: " in task.prompt(task.test[0]) and "\\boxed{}" in task.prompt(task.test[0])


def test_dataset_without_expected_fields_is_a_clear_error(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"q": "x", "a": "#### 1"}) + "\n")
    with pytest.raises(TaskError, match="no field"):
        build_task(task_cfg("gsm8k", f"task.source={p}", "task.allow_train_on_test=true"))


def test_a_pathological_answer_times_out_instead_of_hanging():
    import time

    t = time.time()
    assert answers_match("10^{10^{10^{10^{10}}}} - 10^{10^{10^{10^{10}}}}", "1", timeout_seconds=1) is False
    assert time.time() - t < 20


def test_training_on_the_test_rows_is_refused_unless_allowed(tmp_path, monkeypatch):
    """Same local file (however it is spelled), or same hub name + config + split: refused before any loading."""
    hint = r"point task.train_source at training rows, or set task.allow_train_on_test=true"
    with pytest.raises(TaskError, match=r"task 'math500' would train on its test rows \(HuggingFaceH4/MATH-500 "
                                        r"split test\): " + re.escape(hint)):
        # training on MATH-500 itself (it has only a test split): refused before any loading, no network needed
        build_task(task_cfg("math500", "task.train_split=test"))
    assert task_cfg("math500").train_split == "train"  # of a task.train_source with MATH training rows
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskError, match=re.escape(hint)) as e:
        build_task(task_cfg("gsm8k", f"task.train_source={p}", "task.test_source=./rows.jsonl"))
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    with pytest.raises(TaskError, match=re.escape(hint)):
        build_task(task_cfg("gsm8k", "task.source=OpenAI/GSM8K", "task.train_split=test"))
    task = build_task(task_cfg("gsm8k", f"task.source={p}", "task.allow_train_on_test=true"))
    assert task.train == task.test
    # a copy of the test file under another name: caught by its questions (whitespace and case aside)
    other = tmp_path / "train.jsonl"
    other.write_text(json.dumps({"question": "what is  2 + 3?", "answer": "#### 5"}) + "\n"
                     + json.dumps({"question": "What is 4 + 4?", "answer": "#### 8"}) + "\n")
    with pytest.raises(TaskError, match=r"1 of 1 test questions occur in the training rows \(first: 'What is 2 \+ "
                                        r"3\?'\): train on rows without them, or set task.allow_train_on_test=true"):
        build_task(task_cfg("gsm8k", f"task.train_source={other}", f"task.test_source={p}"))
    allowed = build_task(task_cfg("gsm8k", f"task.train_source={other}", f"task.test_source={p}",
                                  "task.allow_train_on_test=true"))
    assert len(allowed.train) == 2


@pytest.mark.parametrize("name", ["arith", "gsm8k", "math500"])
def test_every_task_config_has_the_new_keys(name):
    cfg = task_cfg(name)
    assert cfg.answer_extraction == {"arith": "strict"}.get(name, "flexible")
    assert cfg.allow_train_on_test is False


def test_arith_rows_name_their_families_and_the_sells_flaw_is_a_consistent_wrong_rule():
    from cdistill.tasks.arith import flaw_family, flawed_solution

    _, test = split(0, 0, 1, 2, 9)
    sells = [r for r in test if r["flaw"] == "sells"]
    # the family a flawed teacher gets wrong: 141 of the 569 held-out problems (a quarter)
    assert len(test) == 569 and len(sells) == 141
    assert all(r["flaw"] == flaw_family(r["question"]) for r in test)
    assert {r["ops"] for r in test} == {"+", "-", "++", "+-", "-+", "--"} and all(
        r["ops"] == "".join(op for op, _ in computation(r)[1]) for r in test)
    for r in train_rows(0, 3000, set(), 1, 2, 9):
        flawed = flawed_solution("sells", r["question"], r["answer"])
        if r["flaw"] == "other":
            assert flawed == r["answer"]
            continue
        # every "sells n" step adds n, every other step is read right, carried on from the (wrong) value
        verbs = re.findall(r"Then \w+ (finds|buys|gets|gives away|loses|sells) \d+", r["question"])
        start, steps = computation(r)
        value = start
        *lines, final = flawed.split("\n")
        for line, (op, n), verb in zip(lines, steps, verbs, strict=True):
            want = "+" if verb == "sells" else op
            after = value + n if want == "+" else value - n
            assert line == f"{value} {want} {n} = {after}" and after >= 0
            value = after
        assert final == f"#### {value}" and grade(flawed, r["answer"].split("#### ")[-1]) == 0.0


def test_family_field_tags_each_test_problem_from_its_row_or_a_derived_family(tmp_path):
    arith_task = build_task(task_cfg("arith", "task.n_train=50", "task.family_field=flaw"))
    assert {p.family for p in arith_task.test} == {"sells", "other"} and all(p.family is None for p in arith_task.train)
    assert all((p.family == "sells") == (" sells " in p.question) for p in arith_task.test)
    assert all(p.family is None for p in build_task(task_cfg("arith", "task.n_train=50")).test)  # null: no families
    rows = [{"question": "Q1", "answer": "a\nb\n#### 1"}, {"question": "Q2", "answer": "a\n\n#### 2"}]
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gsm = build_task(task_cfg("gsm8k", f"task.test_source={p}", f"task.train_source={p}",
                              "task.allow_train_on_test=true", "task.family_field=steps"))
    assert [t.family for t in gsm.test] == ["2", "1"]  # worked lines before '####' (blank lines not counted)
    with pytest.raises(TaskError, match=r"task.family_field='subject': a test row has no field 'subject' \(its "
                                        r"fields: \['answer', 'question'\]; derived: steps\)"):
        build_task(task_cfg("gsm8k", f"task.test_source={p}", f"task.train_source={p}",
                            "task.allow_train_on_test=true", "task.family_field=subject"))
    with pytest.raises(TaskError, match=r"task.family_field='question' splits the 569 test problems into 569 "
                                        r"families; per-family evaluation needs groups of problems \(at most 50\)"):
        build_task(task_cfg("arith", "task.n_train=50", "task.family_field=question"))


@needs_data
@pytest.mark.parametrize(("field", "families"), [
    ("subject", {"Algebra": 124, "Intermediate Algebra": 97, "Prealgebra": 82, "Number Theory": 62, "Precalculus": 56,
                 "Geometry": 41, "Counting & Probability": 38}),
    ("level", {"1": 43, "2": 90, "3": 105, "4": 128, "5": 134}),
])
def test_math500_problems_are_tagged_by_subject_or_level(field, families):
    from collections import Counter

    p = DATA / "math500" / "test.jsonl"
    task = build_task(task_cfg("math500", f"task.test_source={p}", f"task.train_source={p}",
                               "task.allow_train_on_test=true", f"task.family_field={field}"))
    assert Counter(t.family for t in task.test) == families


def test_arith_validation_split_is_made_like_the_test_split_and_never_trained_on_nor_tested():
    task = build_task(task_cfg("arith", "task.n_train=4000"))
    val, test, train = ({computation({"answer": p.solution}) for p in ps} for ps in (task.validation, task.test,
                                                                                       task.train))
    # one question per validation computation, as the test split has one per held-out computation
    assert len(task.validation) == len(val) == len({p.question for p in task.validation}) == 308
    assert not val & test and not val & train and not test & train
    assert len(task.test) == 569  # the test split is the one it always was
    assert task.split("validation") is task.validation and task.split("test") is task.test
    again = build_task(task_cfg("arith", "task.n_train=10"))
    assert [p.question for p in again.validation] == [p.question for p in task.validation]  # fixed by the seed
    assert len(build_task(task_cfg("arith", "task.n_train=10", "task.n_validation=50")).validation) == 50


def test_without_a_validation_fraction_the_embedded_task_is_exactly_what_it_was():
    # task.validation_fraction=0 draws the same training problems as before the validation split existed
    cfg = task_cfg("arith", "task.n_train=500", "task.validation_fraction=0")
    d = cfg.difficulty
    held, _ = split(cfg.seed, cfg.n_test, d.min_steps, d.max_steps, d.max_operand, cfg.held_out_fraction)
    before = train_rows(cfg.seed, 500, set(held), d.min_steps, d.max_steps, d.max_operand, cfg.held_out_fraction)
    task = build_task(cfg)
    assert [p.question for p in task.train] == [r["question"] for r in before] and task.validation == []
    with pytest.raises(TaskError, match="no validation split"):
        task.split("validation")
    with pytest.raises(TaskError, match="validation_fraction must be >= 0 and leave"):
        build_task(task_cfg("arith", "task.validation_fraction=0.7"))


def test_a_dataset_validates_on_a_fixed_seeded_slice_of_its_training_rows_removed_from_training(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(40)]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test.write_text(json.dumps({"question": "t", "answer": "#### 1"}) + "\n")
    cfg = ("gsm8k", f"task.train_source={train}", f"task.test_source={test}", "task.n_validation=10")
    task = build_task(task_cfg(*cfg))
    names = [p.question for p in task.validation]
    assert len(names) == 10 and len(task.train) == 30
    assert not set(names) & {p.question for p in task.train}
    assert names == [p.question for p in build_task(task_cfg(*cfg)).validation]  # the same slice every time
    assert names != [p.question for p in build_task(task_cfg(*cfg, "task.seed=1")).validation]
    with pytest.raises(TaskError, match="n_validation=40 would leave no training rows"):
        build_task(task_cfg("gsm8k", f"task.train_source={train}", f"task.test_source={test}",
                            "task.n_validation=40"))
