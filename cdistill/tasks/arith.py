"""The embedded default task: synthetic multi-step arithmetic word problems in GSM8K's format.

A problem is a short story of ``steps`` additions and subtractions (never below zero); its solution is one
worked line per step and a final ``#### N`` line, exactly like GSM8K's reference solutions, so the same answer
extraction and verifier serve both. Everything is generated from a seed: no files, no network.

The held-out split is held out by what the student must compute, not by wording: a problem's *computation*
is its start value and its sequence of (operation, operand); a stable hash of the computation (and the seed)
puts it in the held-out set with probability ``held_out_fraction``. The test split is one question per held-out
computation; training problems are computations drawn uniformly from the others: both sides come from one
distribution over computations (docs/tasks.md has the measured overlap). The validation split, which tuning and
selection read instead of the test split, is made the same way from a second hash: ``validation_fraction`` of all
computations, none of them held out for testing, one question each, and none of them trained on.

Each row also names the families it belongs to (``task.family_field`` picks one for per-family evaluation):
``flaw`` (``sells`` when a step sells, the family a flawed teacher gets wrong, else ``other``), ``ops`` (the
operations in order, ``+-``) and ``item``. ``FLAWS`` and ``flawed_solution`` give the solutions a teacher with a
known flaw is trained on (``model.embedded.teacher.flaw``, docs/tasks.md).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jin"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles"]
GAIN = ["finds {n} more", "buys {n} more", "gets {n} more"]
LOSS = ["gives away {n}", "loses {n}", "sells {n}"]


HELD_OUT_FRACTION = 0.3  # share of computations held out for the test split (docs/tasks.md: why 0.3)
VALIDATION_FRACTION = 0.0  # share of all computations held out for validation (conf/task/arith.yaml sets 0.15)

Computation = tuple[int, tuple[tuple[str, int], ...]]  # (start value, ((op, operand), ...)), op "+" or "-"


def computation(row: dict) -> Computation:
    """What a problem asks the student to compute, read from its worked solution."""
    steps = [line.split() for line in row["answer"].split("\n") if not line.startswith("####")]
    return int(steps[0][0]), tuple((op, int(b)) for _a, op, b, _eq, _c in steps)


def computation_key(comp: Computation) -> str:
    """The canonical text of a computation, e.g. ``7+5-3``."""
    start, steps = comp
    return f"{start}" + "".join(f"{op}{n}" for op, n in steps)


def is_held_out(comp: Computation, seed: int, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether ``comp`` is held out: a stable hash of it (sha256, not Python's salted hash) below ``fraction``."""
    digest = hashlib.sha256(f"arith-held-out-{seed}:{computation_key(comp)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def is_validation(comp: Computation, seed: int, held_out_fraction: float = HELD_OUT_FRACTION,
                  validation_fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether ``comp`` is held out for validation: not a test computation, and a second stable hash below the
    share of the remaining computations that makes ``validation_fraction`` of all of them."""
    if validation_fraction <= 0 or is_held_out(comp, seed, held_out_fraction):
        return False
    digest = hashlib.sha256(f"arith-validation-{seed}:{computation_key(comp)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < validation_fraction / (1 - held_out_fraction) * 2**64


def is_reserved(comp: Computation, seed: int, held_out_fraction: float = HELD_OUT_FRACTION,
                validation_fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether ``comp`` is never trained on: held out for testing or for validation."""
    return is_held_out(comp, seed, held_out_fraction) or is_validation(comp, seed, held_out_fraction,
                                                                        validation_fraction)


def all_computations(min_steps: int, max_steps: int, max_operand: int) -> list[Computation]:
    """Every computation ``make_problem`` can produce at this difficulty (values never go below zero)."""
    out = []

    def grow(start: int, value: int, steps: tuple) -> None:
        if len(steps) >= min_steps:
            out.append((start, steps))
        if len(steps) == max_steps:
            return
        for n in range(1, max_operand + 1):
            grow(start, value + n, (*steps, ("+", n)))
            if n <= value:
                grow(start, value - n, (*steps, ("-", n)))

    for start in range(1, max_operand + 1):
        grow(start, start, ())
    return out


def _check_fraction(fraction: float, validation_fraction: float = 0.0) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"task.held_out_fraction must be between 0 and 1 (exclusive), got {fraction}")
    if not 0.0 <= validation_fraction < 1.0 - fraction:
        raise ValueError(f"task.validation_fraction must be >= 0 and leave computations to train on (below "
                         f"1 - task.held_out_fraction = {1 - fraction:g}), got {validation_fraction}")


def render(rng: random.Random, comp: Computation) -> dict:
    """A problem (a GSM8K row) that asks for ``comp``, in a random wording: name, item and verbs; with the
    families it belongs to (``flaw``, ``ops``, ``item``: fields ``task.family_field`` can name)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value, steps = comp
    story, lines = [f"{name} has {value} {item}."], []
    for op, n in steps:
        verbs = GAIN if op == "+" else LOSS
        story.append(f"Then {name} {rng.choice(verbs).format(n=n)}.")
        after = value + n if op == "+" else value - n
        lines.append(f"{value} {op} {n} = {after}")
        value = after
    story.append(f"How many {item} does {name} have now?")
    question = " ".join(story)
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {value}",
            "flaw": flaw_family(question), "ops": "".join(op for op, _ in steps), "item": item}


# A teacher with a known flaw (model.embedded.teacher.flaw) is trained on solutions in which one family of
# problems follows a consistent, wrong rule, so that it is confidently wrong there and right elsewhere.
# "sells": the verb "sells n" is read as a gain (the worked line adds n); "gives away n" and "loses n" are read
# right. Values only grow under the wrong rule, so a flawed solution never goes below zero.
FLAWS = {"sells": "sells"}  # flaw name -> the loss verb it reads as a gain
OTHER = "other"  # the family of the problems no flaw touches
_STEP = re.compile(r"Then \w+ (.+?) (\d+)( more)?$")


def _step_verbs(question: str) -> list[str]:
    """The verb of each step of a question (``sells``, ``gives away``, ``finds`` ...), in order."""
    sentences = [s.rstrip(".") for s in question.split(". ")]
    return [m.group(1) for s in sentences if (m := _STEP.match(s))]


def flaw_family(question: str) -> str:
    """The family of a problem under the flaws: the name of the first flaw that misreads one of its steps, else
    ``other``."""
    verbs = _step_verbs(question)
    return next((name for name, verb in FLAWS.items() if verb in verbs), OTHER)


def flawed_solution(flaw: str, question: str, solution: str) -> str:
    """The worked solution a teacher with ``flaw`` learns: the reference solution where the flaw reads no step
    wrong; otherwise every misread step done by the wrong rule (an addition) and the later lines carried on from
    the wrong value, down to a wrong ``#### N``."""
    if flaw not in FLAWS:
        raise ValueError(f"unknown flaw {flaw!r}; available: {', '.join(FLAWS)}")
    start, steps = computation({"answer": solution})
    verbs = _step_verbs(question)
    if len(verbs) != len(steps):
        raise ValueError(f"question and solution disagree on the number of steps: {question!r}")
    value, lines = start, []
    for (op, n), verb in zip(steps, verbs, strict=True):
        op = "+" if verb == FLAWS[flaw] else op
        after = value + n if op == "+" else value - n
        lines.append(f"{value} {op} {n} = {after}")
        value = after
    return "\n".join(lines) + f"\n#### {value}"


def split(seed: int, n_test: int, min_steps: int, max_steps: int, max_operand: int,
          held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[list[str], list[dict]]:
    """The fixed held-out split: one question for each held-out computation (``n_test`` of them, in a seeded
    order; 0: all), each in a random wording.

    One question per computation makes every test problem an independent draw of what is being measured (a
    computation the student never trained on): several wordings of one computation would be graded almost
    alike, and an interval over problems would count them as independent evidence. Like the training problems
    (``train_rows``), the test's are spread uniformly over computations (mostly two-step ones: there are far more
    of those). Returns the sorted questions and the rows.
    """
    _check_fraction(held_out_fraction)
    held = [c for c in all_computations(min_steps, max_steps, max_operand) if is_held_out(c, seed, held_out_fraction)]
    if n_test > len(held):
        raise ValueError(f"only {len(held)} computations are held out at this difficulty (task.held_out_fraction="
                         f"{held_out_fraction}), one test question each: lower task.n_test to at most {len(held)}")
    rng = random.Random(f"arith-test-{seed}")
    rng.shuffle(held)
    rows = [render(rng, c) for c in held[: n_test or len(held)]]
    return sorted(r["question"] for r in rows), rows


def validation_split(seed: int, n_validation: int, min_steps: int, max_steps: int, max_operand: int,
                     held_out_fraction: float = HELD_OUT_FRACTION,
                     validation_fraction: float = VALIDATION_FRACTION) -> tuple[list[str], list[dict]]:
    """The validation split, made as the test split is (``split``): one question for each validation computation
    (``n_validation`` of them, in a seeded order; 0: all), each in a random wording. Empty when
    ``validation_fraction`` is 0. Returns the sorted questions and the rows."""
    _check_fraction(held_out_fraction, validation_fraction)
    comps = [c for c in all_computations(min_steps, max_steps, max_operand)
             if is_validation(c, seed, held_out_fraction, validation_fraction)]
    if n_validation > len(comps):
        raise ValueError(f"only {len(comps)} computations are held out for validation at this difficulty "
                         f"(task.validation_fraction={validation_fraction}), one question each: lower "
                         f"task.n_validation to at most {len(comps)}")
    rng = random.Random(f"arith-validation-{seed}")
    rng.shuffle(comps)
    rows = [render(rng, c) for c in comps[: n_validation or len(comps)]]
    return sorted(r["question"] for r in rows), rows


def train_rows(seed: int, n: int, held_out: set[str], min_steps: int, max_steps: int, max_operand: int,
               held_out_fraction: float = HELD_OUT_FRACTION,
               validation_fraction: float = VALIDATION_FRACTION) -> list[dict]:
    """``n`` training problems: each a computation drawn uniformly from those not held out (repeats allowed) in a
    random wording, never one of the ``held_out`` questions. Training and test problems thus come from one
    distribution over computations, split by computation; validation computations are never drawn either."""
    _check_fraction(held_out_fraction, validation_fraction)
    pool = [c for c in all_computations(min_steps, max_steps, max_operand)
            if not is_reserved(c, seed, held_out_fraction, validation_fraction)]
    if not pool:
        raise ValueError(f"every computation at this difficulty is held out (task.held_out_fraction="
                         f"{held_out_fraction}): nothing is left to train on")
    rng = random.Random(f"arith-train-{seed}")
    rows = []
    while len(rows) < n:
        row = render(rng, rng.choice(pool))
        if row["question"] not in held_out:
            rows.append(row)
    return rows


def measure_split(train: list[dict], test: list[dict], seed: int | None = None,
                  held_out_fraction: float = HELD_OUT_FRACTION, difficulty: tuple[int, int, int] | None = None,
                  ) -> dict:
    """How much of the test split the training rows already show (docs/tasks.md reports these numbers).

    ``computation_in_train``: share of test problems whose computation occurs in training (0 by construction);
    ``solution_in_train``: share whose whole worked solution occurs verbatim as a training solution;
    ``steps_prefix_in_train``: share whose worked lines (without ``####``) begin some training solution;
    ``every_step_line_in_train``: share each of whose step lines ("7 + 5 = 12") occurs in some training solution;
    ``distinct_test_computations`` and ``distinct_test_questions``: how varied the test split is;
    ``effective_test_size``: (sum n_c)^2 / sum n_c^2 over the test's computations c (n_c problems each), the
    number of independent problems the split is worth if correctness depended on the computation alone. With ``seed``
    and ``difficulty`` (min_steps, max_steps, max_operand): how many computations exist and are held out.
    """
    def lines(r: dict) -> list[str]:
        return [ln for ln in r["answer"].split("\n") if not ln.startswith("####")]

    train_comps = {computation(r) for r in train}
    train_solutions = {r["answer"] for r in train}
    train_lines = {ln for r in train for ln in lines(r)}
    train_prefixes = {"\n".join(lines(r)[:k]) for r in train for k in range(1, len(lines(r)) + 1)}
    n = len(test)
    out = {
        "test_problems": n,
        "computation_in_train": sum(computation(r) in train_comps for r in test) / n,
        "solution_in_train": sum(r["answer"] in train_solutions for r in test) / n,
        "steps_prefix_in_train": sum("\n".join(lines(r)) in train_prefixes for r in test) / n,
        "every_step_line_in_train": sum(all(ln in train_lines for ln in lines(r)) for r in test) / n,
        "distinct_test_computations": len({computation(r) for r in test}),
        "distinct_test_questions": len({r["question"] for r in test}),
        "effective_test_size": n * n / sum(k * k for k in Counter(computation(r) for r in test).values()),
    }
    if seed is not None and difficulty is not None:
        every = all_computations(*difficulty)
        out["computations"] = len(every)
        out["held_out_computations"] = sum(is_held_out(c, seed, held_out_fraction) for c in every)
    return out
