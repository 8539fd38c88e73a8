"""Tasks and the verifier: the embedded generator, real GSM8K / MATH-500 rows, answer checking."""

import json
import re
from pathlib import Path

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir

from cdistill.tasks import build_task
from cdistill.tasks.arith import make_problem, split, train_rows
from cdistill.tasks.base import TaskError, read_jsonl
from cdistill.tasks.verifier import answers_match, extract_answer, grade

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="../shared/data not present")


def task_cfg(name, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", [f"task={name}", *overrides]).task


def test_arith_solutions_are_correct_gsm8k_style_worked_lines():
    import random

    rng = random.Random(1)
    for _ in range(300):
        row = make_problem(rng, 1, 3, 9)
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
    assert rows == rows2 and len({r["question"] for r in rows}) == 50
    train = train_rows(0, 2000, set(held), 1, 2, 9)
    assert not {r["question"] for r in train} & set(held)


def test_arith_difficulty_knob_sets_the_number_of_steps():
    import random

    rng = random.Random(0)
    steps = {make_problem(rng, 3, 3, 9)["answer"].count("\n") for _ in range(50)}
    assert steps == {3}


@pytest.mark.parametrize(("text", "want"), [
    ("2 + 3 = 5\n#### 5", "5"), ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"), ("no answer here", None),
    ("#### 1,000\nmore", "1,000"), ("\\boxed{a} then \\boxed{b}", "b"),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


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
    cfg = task_cfg("gsm8k", f"task.source={DATA / 'gsm8k' / 'test.jsonl'}", "task.n_test=0")
    task = build_task(cfg)
    assert len(task.test) == 1319
    for p in task.test:
        assert re.fullmatch(r"-?\d+(\.\d+)?", p.gold), p.gold
        assert task.reward(f"...\n#### {p.gold}", p) == 1.0
        assert task.reward(f"#### {int(float(p.gold)) + 1}", p) == 0.0


@needs_data
def test_math500_rows_load_with_their_answers():
    cfg = task_cfg("math500", f"task.source={DATA / 'math500' / 'test.jsonl'}", "task.n_test=0")
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
        build_task(task_cfg("gsm8k", f"task.source={p}"))


def test_a_pathological_answer_times_out_instead_of_hanging():
    import time

    t = time.time()
    assert answers_match("10^{10^{10^{10^{10}}}} - 10^{10^{10^{10^{10}}}}", "1", timeout_seconds=1) is False
    assert time.time() - t < 20
