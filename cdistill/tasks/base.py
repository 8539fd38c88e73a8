"""Task = problems + prompt format + verifier, behind one small interface for every dataset."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from cdistill.jsonl import read_jsonl as read_rows
from cdistill.tasks import arith
from cdistill.tasks.verifier import check_mode, extract_answer, grade, last_boxed


class TaskError(ValueError):
    """A dataset that cannot be used as configured (missing file, bad row, wrong fields)."""


@dataclass(frozen=True)
class Problem:
    question: str
    gold: str  # the final answer the verifier compares against
    solution: str  # a reference worked solution (for SFT and for reading reports)
    family: str | None = None  # the problem's family for per-family evaluation (task.family_field); None: none


def gold_from_row(row: dict, answer_format: str) -> str:
    if answer_format == "gsm8k":
        ans = row["answer"]
        if "####" not in ans:
            raise TaskError("a GSM8K-format answer has no '#### <number>' line")
        return ans.split("####")[-1].strip().replace(",", "")
    if answer_format == "math":
        if row.get("answer"):
            return str(row["answer"]).strip()
        boxed = last_boxed(row.get("solution", ""))
        if boxed is None:
            raise TaskError("a MATH row has neither an 'answer' field nor a \\boxed{} solution")
        return boxed
    raise TaskError(f"unknown answer_format {answer_format!r}; expected gsm8k or math")


def row_to_problem(row: dict, fields: dict, answer_format: str) -> Problem:
    q, s = fields["question"], fields["solution"]
    missing = [k for k in (q, s) if k not in row]
    if missing:
        raise TaskError(f"row has no field(s) {missing}; it has {sorted(row)}")
    solution = row[s]
    return Problem(question=row[q], gold=gold_from_row(row, answer_format), solution=solution)


def worked_lines(row: dict, fields: dict) -> str:
    """How many worked lines a GSM8K-format solution has before its ``####`` line (a difficulty proxy)."""
    return str(sum(1 for line in row[fields["solution"]].split("####")[0].splitlines() if line.strip()))


MAX_FAMILIES = 50
# families no row field holds but a row implies: name -> (the answer format it needs, the family of a row)
DERIVED_FAMILIES = {"steps": ("gsm8k", worked_lines)}


def row_family(row: dict, field: str, fields: dict, answer_format: str) -> str:
    """The family of a row named by ``task.family_field``: the row's own field as text (MATH-500's ``subject`` or
    ``level``; the embedded task's ``flaw``, ``ops`` or ``item``), else a family derived from the row (``steps``)."""
    if row.get(field) is not None:
        return str(row[field])
    fmt, derive = DERIVED_FAMILIES.get(field, (None, None))
    if fmt == answer_format:
        return derive(row, fields)
    derived = [k for k, (f, _) in DERIVED_FAMILIES.items() if f == answer_format]
    raise TaskError(f"task.family_field={field!r}: a test row has no field {field!r} (its fields: {sorted(row)}"
                    + (f"; derived: {', '.join(derived)}" if derived else "") + "): name one of those, or null for "
                    "no families")


def family_order(name: str) -> tuple:
    """Families in natural order: numbers by value (levels 1..5, 2 before 11), then names alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def read_jsonl(path: str | Path) -> list[dict]:
    rows = read_rows(path, error=TaskError, what="dataset file")
    if not rows:
        raise TaskError(f"dataset file is empty: {Path(path)}")
    return rows


def load_rows(source: str, split: str, hub_config: str | None = None) -> list[dict]:
    """Rows from a local JSONL file (``split`` is ignored) or a Hugging Face hub dataset name."""
    if source.endswith(".jsonl") or Path(source).exists():
        return read_jsonl(source)
    from datasets import load_dataset

    return [dict(r) for r in load_dataset(source, hub_config, split=split)]


SPLITS = ("test", "validation")  # what an evaluation may read (eval.split)


class Task:
    """Train, validation and test problems, the prompt text for a problem, and the reward of a completion.

    Tuning and selection read ``validation`` (disjoint from both others, made like the test split); a final run
    reads ``test`` once (docs/tasks.md, "Splits").

    ``answer_extraction`` (strict | flexible) and ``answer_format`` (gsm8k | math) say how a final answer is
    read from a completion (cdistill/tasks/verifier.py, docs/tasks.md).
    """

    def __init__(self, name: str, train: list[Problem], test: list[Problem], template: str,
                 use_chat_template: bool | str = False, answer_extraction: str = "strict",
                 answer_format: str = "gsm8k", validation: list[Problem] | None = None):
        if not train or not test:
            raise TaskError(f"task {name!r} has an empty split (train {len(train)}, test {len(test)})")
        try:
            check_mode(answer_extraction, answer_format)
        except ValueError as e:
            raise TaskError(f"task {name!r}: {e}") from None
        self.name, self.train, self.test, self.template = name, train, test, template
        self.validation = list(validation or [])
        self.answer_extraction, self.answer_format = answer_extraction, answer_format
        self.use_chat_template = use_chat_template
        self.chat_tokenizer = None
        # plain prompts get the tokenizer's special tokens (a BOS for Llama); chat-templated text has them
        self.add_special_tokens = True

    def split(self, name: str) -> list[Problem]:
        """The held-out problems of ``name`` (``test`` or ``validation``), refused in one line when there are none."""
        if name not in SPLITS:
            raise TaskError(f"unknown eval.split {name!r}; expected one of {', '.join(SPLITS)}")
        problems = self.test if name == "test" else self.validation
        if not problems:
            raise TaskError(f"task {self.name!r} has no validation split: set task.validation_fraction (embedded) "
                            "or task.n_validation (a dataset) above 0")
        return problems

    def bind_tokenizer(self, tokenizer) -> None:
        """Use ``tokenizer``'s chat template for prompts when configured (``auto``: when it has one)."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.use_chat_template is True and not has_template:
            raise TaskError("task.use_chat_template=true but the tokenizer has no chat template")
        if self.use_chat_template is True or (self.use_chat_template == "auto" and has_template):
            self.chat_tokenizer = tokenizer
            self.add_special_tokens = False

    def prompt(self, problem: Problem) -> str:
        text = self.template.format(question=problem.question)
        if self.chat_tokenizer is None:
            return text
        return self.chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    @property
    def extraction(self) -> str:
        """The answer-extraction mode, ``strict`` or ``flexible`` (for reports)."""
        return self.answer_extraction

    def extract(self, completion: str) -> str | None:
        """The completion's final answer (normalised) in this task's extraction mode, or None."""
        return extract_answer(completion, self.answer_extraction, self.answer_format)

    def reward(self, completion: str, problem: Problem) -> float:
        return grade(completion, problem.gold, self.answer_extraction, self.answer_format)


def _is_local(source: str) -> bool:
    return source.endswith(".jsonl") or Path(source).exists()


def check_no_train_on_test(cfg) -> None:
    """Refuse training and test rows from the same source, unless ``task.allow_train_on_test=true``.

    Same source: the same local file (resolved path; a file has no splits), or the same hub dataset, config and
    split. Only identical sources are caught, not overlapping ones (a local copy of a hub split, a sub-slice).
    """
    if cfg.get("allow_train_on_test", False):
        return
    train, test = cfg.train_source or cfg.source, cfg.test_source or cfg.source
    if _is_local(train) or _is_local(test):
        same = _is_local(train) and _is_local(test) and Path(train).resolve() == Path(test).resolve()
        what = f"the file {Path(test).resolve()}"
    else:
        hub_config = cfg.get("hub_config")  # one key serves both splits
        same = (train.casefold(), cfg.train_split) == (test.casefold(), cfg.test_split)
        what = f"{test}{f' config {hub_config}' if hub_config else ''} split {cfg.test_split}"
    if same:
        raise TaskError(f"task {cfg.name!r} would train on its test rows ({what}): point task.train_source at "
                        "training rows, or set task.allow_train_on_test=true")


def check_no_shared_questions(name: str, train: list[Problem], test: list[Problem]) -> None:
    """Refuse test problems whose question occurs among the training rows (whitespace and case aside): what
    ``check_no_train_on_test`` cannot see from the names, such as a copy of the test file or a training set that
    contains the test set (hendrycks MATH's test split holds all of MATH-500)."""
    def key(q: str) -> str:
        return " ".join(q.split()).casefold()

    seen = {key(p.question) for p in train}
    shared = [p.question for p in test if key(p.question) in seen]
    if shared:
        first = " ".join(shared[0].split())
        raise TaskError(f"task {name!r}: {len(shared)} of {len(test)} test questions occur in the training rows "
                        f"(first: {first[:60]!r}): train on rows without them, or set task.allow_train_on_test=true")


def validation_rows(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed seeded slice of ``n`` training rows for validation, removed from training: (train, validation).
    The slice depends on the seed and the rows alone, so every run and method of a study validates on the same
    problems."""
    if n <= 0:
        return rows, []
    if n >= len(rows):
        raise TaskError(f"task.n_validation={n} would leave no training rows (the training source has {len(rows)})")
    picked = set(random.Random(f"validation-{seed}").sample(range(len(rows)), n))
    return ([r for i, r in enumerate(rows) if i not in picked], [r for i, r in enumerate(rows) if i in picked])


def build_task(cfg) -> Task:
    """A Task from the ``task`` config group (see conf/task/*.yaml)."""
    mode = cfg.get("answer_extraction", "strict")
    try:
        check_mode(mode, cfg.answer_format)
    except ValueError as e:
        raise TaskError(f"task {cfg.name!r}: {e}") from None
    if cfg.source == "embedded":
        d = cfg.difficulty
        fraction = cfg.get("held_out_fraction", arith.HELD_OUT_FRACTION)
        vfraction = cfg.get("validation_fraction", arith.VALIDATION_FRACTION)
        try:
            held, test_rows = arith.split(cfg.seed, cfg.n_test, d.min_steps, d.max_steps, d.max_operand, fraction)
            _, val_rows = arith.validation_split(cfg.seed, cfg.get("n_validation", 0), d.min_steps, d.max_steps,
                                                 d.max_operand, fraction, vfraction)
            train_rows = arith.train_rows(cfg.seed, cfg.n_train, set(held), d.min_steps, d.max_steps,
                                          d.max_operand, fraction, vfraction)
        except ValueError as e:
            raise TaskError(str(e)) from None
        rows = {"train": train_rows, "test": test_rows, "validation": val_rows}
    else:
        check_no_train_on_test(cfg)
        train_rows, val_rows = validation_rows(
            load_rows(cfg.train_source or cfg.source, cfg.train_split, cfg.get("hub_config")),
            cfg.get("n_validation", 0), cfg.seed)
        rows = {
            "train": train_rows,
            "test": load_rows(cfg.test_source or cfg.source, cfg.test_split, cfg.get("hub_config")),
            "validation": val_rows,
        }
    fields = {"question": cfg.fields.question, "solution": cfg.fields.solution}
    probs = {k: [row_to_problem(r, fields, cfg.answer_format) for r in v] for k, v in rows.items()}
    family_field = cfg.get("family_field")
    if family_field:  # only the held-out rows are evaluated per family (training rows may lack the field)
        probs["test"] = [replace(p, family=row_family(r, family_field, fields, cfg.answer_format))
                         for p, r in zip(probs["test"], rows["test"], strict=True)]
        try:  # validation rows come from the training source, which may not hold the test rows' field
            probs["validation"] = [replace(p, family=row_family(r, family_field, fields, cfg.answer_format))
                                   for p, r in zip(probs["validation"], rows["validation"], strict=True)]
        except TaskError:
            pass
        n = len({p.family for p in probs["test"]})
        if n > MAX_FAMILIES:  # a per-problem field (the question, the answer): no family would hold a sample
            raise TaskError(f"task.family_field={family_field!r} splits the {len(probs['test'])} test problems into "
                            f"{n} families; per-family evaluation needs groups of problems (at most {MAX_FAMILIES})")
    if not cfg.get("allow_train_on_test", False):
        check_no_shared_questions(cfg.name, probs["train"], probs["test"])
    test = probs["test"]
    if cfg.n_test and len(test) > cfg.n_test:
        test = random.Random(cfg.seed).sample(test, cfg.n_test)
    return Task(cfg.name, probs["train"], test, cfg.prompt_template, cfg.get("use_chat_template", False),
                mode, cfg.answer_format, validation=probs["validation"])
