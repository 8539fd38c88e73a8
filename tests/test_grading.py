"""Grading real models' answers: the strict and flexible extraction modes and answer normalisation.

The completions are the output styles of the experiment models: Qwen2.5-Math ("put your final answer within
\\boxed{}"), Llama 3 instruct evals (MATH: "Therefore, the final answer is: $\\boxed{X}$. I hope it is correct.",
GSM8K: "The final answer is N"), SmolLM2-Instruct (free prose), markdown "**Answer: X**".
"""

import json

import pytest
from test_tasks import DATA, needs_data, task_cfg

from cdistill.tasks import Problem, build_task
from cdistill.tasks.base import Task, TaskError
from cdistill.tasks.verifier import answers_match, extract_answer, grade, last_boxed, normalize

FLEXIBLE_RIGHT = [  # (completion, gold): graded right in flexible mode, for both answer formats
    ("Each costs $5, so two cost \\boxed{\\$10}.", "10"),
    ("12 + 60 = 72 apples in all. The answer is 72.", "72"),
    ("Therefore, the final answer is: $72. I hope it is correct.", "72"),
    ("Therefore, the final answer is: $\\boxed{72}$. I hope it is correct.", "72"),
    ("48 + 24 = 72\n\n**Answer: 72**", "72"),
    ("48 + 24 = 72\n\n**Answer:** 72", "72"),
    ("She sold 48 + 24 = 72 clips. The final answer is 72", "72"),  # Llama 3 GSM8K
    ("Final Answer: The final answer is $72$. I hope it is correct.", "72"),  # Minerva style
    ("Half of 144 is 72.\n\nAnswer: \\(72\\)", "72"),
    ("The answer is:\n\n72", "72"),
    ("The answer is:\n\\[\n72\n\\]\nDone.", "72"),
    ("So Ava has 12 apples now.", "12"),  # SmolLM2 prose: the last number
    ("The total is 1,000 + 234 = 1,234 dollars.", "1234"),
    ("The answer is 18 dollars.", "18"),
    ("The answer is $1,000.", "1000"),
    ("the answer is \\(\\frac{1}{2}\\).", "\\frac{1}{2}"),
    ("so the answer is 50\\%.", "50"),
    ("Answer: $\\frac{5}{9}$", "\\frac59"),
    ("The final answer is $\\frac{270}{7}\\text{ degrees}$.", "\\frac{270}7\\text{ degrees}"),
]


@pytest.mark.parametrize("fmt", ["gsm8k", "math"])
@pytest.mark.parametrize(("completion", "gold"), FLEXIBLE_RIGHT)
def test_flexible_mode_grades_real_answer_styles_right(completion, gold, fmt):
    assert grade(completion, gold, "flexible", fmt) == 1.0, extract_answer(completion, "flexible", fmt)


@pytest.mark.parametrize(("completion", "fmt", "want"), [
    ("Each costs $5, so two cost \\boxed{\\$10}.", "math", "10"),  # math's own format: the last \boxed{}
    ("Therefore, the final answer is: $\\boxed{72}$. I hope it is correct.", "math", "72"),
    ("Please reason step by step: 2 + 2 = 4 and \\boxed{4}. Then \\boxed{8}.", "math", "8"),
    ("48 + 24 = 72\n#### 72", "gsm8k", "72"),  # gsm8k's own format: the first '#### N' line
    ("#### $1,234.\nQuestion: next one\n#### 5", "gsm8k", "1234"),
])
def test_strict_mode_reads_the_tasks_own_format(completion, fmt, want):
    assert extract_answer(completion, "strict", fmt) == want


@pytest.mark.parametrize("fmt", ["gsm8k", "math"])
@pytest.mark.parametrize("completion", [
    "12 + 60 = 72 apples in all. The answer is 72.",
    "Therefore, the final answer is: $72. I hope it is correct.",
    "**Answer: 72**",
    "The final answer is 72",
    "So Ava has 72 apples now.",
])
def test_strict_mode_refuses_the_fallbacks(completion, fmt):
    assert extract_answer(completion, "strict", fmt) is None
    assert grade(completion, "72", "strict", fmt) == 0.0


def test_strict_gsm8k_refuses_a_boxed_answer_and_strict_math_a_hash_line():
    assert extract_answer("\\boxed{72}", "strict", "gsm8k") is None
    assert extract_answer("#### 72", "strict", "math") is None
    assert extract_answer("\\boxed{72}", "flexible", "gsm8k") == "72"
    assert extract_answer("#### 72", "flexible", "math") == "72"


@pytest.mark.parametrize(("completion", "gold"), [
    ("12 + 59 = 71. The answer is 71.", "72"),
    ("Ava had 72 apples, then gave away 3, leaving 69.", "72"),  # the last number is not the answer
    ("Therefore, the final answer is: $\\boxed{71}$. I hope it is correct.", "72"),
    ("**Answer: 7.2**", "72"),
    ("The answer is 72 and 3 more, 75.", "75"),  # the phrase wins over the last number
    ("\\boxed{\\$10.50}", "10"),
    ("I do not know.", "72"),
    ("The answer is 72 (or 73).", "73"),  # hedges are not credited
    ("The answer is 72 or 73.", "72"),
    ("**Answer:** 72, 73", "73"),
    ("\\boxed{72 \\text{ or } 73}", "73"),
])
def test_wrong_answers_stay_wrong(completion, gold):
    for fmt in ("gsm8k", "math"):
        assert grade(completion, gold, "flexible", fmt) == 0.0, extract_answer(completion, "flexible", fmt)
    # gsm8k's own format comes first, even in flexible mode
    assert grade("#### 71\nWait, maybe it is 72.", "72", "flexible", "gsm8k") == 0.0


def test_the_fallback_order_is_format_then_boxed_then_phrase_then_last_number():
    text = "#### 1\n\\boxed{2}\nThe answer is 3.\nIn all 4"
    assert extract_answer(text, "flexible", "gsm8k") == "1"
    assert extract_answer(text, "flexible", "math") == "2"
    assert extract_answer(text.replace("#### 1\n", ""), "flexible", "gsm8k") == "2"
    assert extract_answer("The answer is 3.\nIn all 4", "flexible", "gsm8k") == "3"
    assert extract_answer("In all 4. The answer is: ", "flexible", "gsm8k") == "4"  # an empty phrase falls through
    assert extract_answer("Final answer: 5 and The answer is 6.", "flexible", "gsm8k") == "6"  # the last phrase


@pytest.mark.parametrize(("raw", "want"), [
    ("\\$10", "10"), ("$72$", "72"), ("\\(72\\)", "72"), ("**72**", "72"), ("72.", "72"), ("1,234,567", "1234567"),
    ("50\\%", "50"), ("50%", "50"), ("10,\\!080", "10080"), ("\\$32,\\!348", "32348"), ("90^\\circ", "90"),
    ("5.4 \\text{ cents}", "5.4"), ("864 \\mbox{ inches}^2", "864"), ("\\text{Evelyn}", "Evelyn"),
    ("\\boxed{72}", "72"), ("1,-2", "1,-2"), ("(3,4]", "(3,4]"), ("(1,234)", "(1,234)"),
])
def test_normalize(raw, want):
    assert normalize(raw) == want
    assert normalize(want) == want  # idempotent: golds and extracted answers can both go through it


@pytest.mark.parametrize(("pred", "gold", "ok"), [
    ("\\text{Evelyn}", "\\text{Evelyn}", True), ("Evelyn", "\\text{Evelyn}", True), ("Navin", "\\text{Evelyn}", False),
    ("90", "90^\\circ", True), ("864", "864 \\mbox{ inches}^2", True), ("32348", "\\$32,\\!348", True),
    ("0.5", "\\frac12", True), ("1,234", "1234", True), ("(1,234)", "(1234)", False),
])
def test_golds_are_normalised_like_answers(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_task_extract_and_reward_use_the_tasks_mode():
    p = Problem(question="q", gold="72", solution="#### 72")
    strict = Task("t", [p], [p], "{question}", answer_extraction="strict", answer_format="gsm8k")
    flexible = Task("t", [p], [p], "{question}", answer_extraction="flexible", answer_format="gsm8k")
    text = "So the answer is 72."
    assert strict.extract(text) is None and strict.reward(text, p) == 0.0
    assert flexible.extract(text) == "72" and flexible.reward(text, p) == 1.0
    assert flexible.extract("#### 72") == strict.extract("#### 72") == "72"
    assert (strict.extraction, flexible.extraction) == ("strict", "flexible")
    with pytest.raises(TaskError, match="unknown answer_extraction 'loose'"):
        Task("t", [p], [p], "{question}", answer_extraction="loose")


def test_unknown_mode_is_refused_when_the_task_is_built():
    with pytest.raises(TaskError, match=r"^task 'arith': unknown answer_extraction 'loose'; expected one of strict, "
                                        r"flexible$"):
        build_task(task_cfg("arith", "task.answer_extraction=loose"))
    with pytest.raises(ValueError, match="unknown answer_extraction"):
        extract_answer("#### 1", "loose")


def test_default_modes_per_task():
    assert [task_cfg(n).answer_extraction for n in ("arith", "gsm8k", "math500")] == ["strict", "flexible",
                                                                                      "flexible"]
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


@needs_data
def test_every_gsm8k_gold_is_graded_right_in_each_style_and_its_neighbour_wrong():
    golds = [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
             for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    for g in golds:
        for text in (f"#### {g}", f"The answer is {g}.", f"The final answer is {g}", f"**Answer: {g}**",
                     f"\\boxed{{{g}}}", f"So she has {g} left."):
            assert grade(text, g, "flexible", "gsm8k") == 1.0, (text, g)
        assert grade(f"The answer is {int(g) + 1}.", g, "flexible", "gsm8k") == 0.0


@needs_data
def test_every_math500_gold_is_graded_right_in_the_llama_and_qwen_styles():
    golds = [json.loads(line)["answer"] for line in (DATA / "math500" / "test.jsonl").read_text().splitlines()]
    for g in golds:
        for text, mode in ((f"so \\boxed{{{g}}}", "strict"),
                           (f"Therefore, the final answer is: $\\boxed{{{g}}}$. I hope it is correct.", "strict"),
                           (f"The final answer is ${g}$. I hope it is correct.", "flexible"),
                           (f"**Answer:** ${g}$", "flexible")):
            assert grade(text, g, mode, "math") == 1.0, (text, g)


def test_a_run_of_hashes_is_no_answer_in_strict_mode():
    # an untrained model's '##########' must count as unparsed, not as the answer '######'
    assert extract_answer("##########", "strict", "gsm8k") is None
    assert extract_answer("2 + 3 = 5\n#### 5", "strict", "gsm8k") == "5"


@pytest.mark.parametrize(("completion", "gold", "right"), [
    ("The answer is 72 because 8 x 9 = 72.", "72", 1.0),  # the justification after the answer is not the answer
    ("So the answer is 72, since 8 * 9 = 72.", "72", 1.0),
    ("Let me find the answer: first 3+4=7, then 7*2=14", "14", 1.0),  # "answer:" in prose is not a label
    ("Answer:\n1. Ava has 5.\n2. She gets 3, so she has 8.", "8", 1.0),  # a worked list, not the answer "1"
    ("the answer is 3 or more", "3", 0.0),  # a hedge is not the answer
    ("The answer is 1 million", "1", 0.0),  # nor is a magnitude
    ("The answer is 72 apples.", "72", 1.0),
])
def test_flexible_mode_reads_the_stated_answer_not_its_justification(completion, gold, right):
    assert grade(completion, gold, "flexible", "gsm8k") == right
