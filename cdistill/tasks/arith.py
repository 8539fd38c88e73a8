"""The embedded default task: synthetic multi-step arithmetic word problems in GSM8K's format.

A problem is a short story of ``steps`` additions and subtractions; its solution is one worked line per
step and a final ``#### N`` line, exactly like GSM8K's reference solutions, so the same answer
extraction and verifier serve both. Everything is generated from a seed: no files, no network.
"""

from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jin"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles"]
GAIN = ["finds {n} more", "buys {n} more", "gets {n} more"]
LOSS = ["gives away {n}", "loses {n}", "sells {n}"]


def make_problem(rng: random.Random, min_steps: int, max_steps: int, max_operand: int) -> dict:
    """One problem as a GSM8K row: ``question`` and ``answer`` (worked lines, then ``#### N``)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, max_operand)
    story = [f"{name} has {value} {item}."]
    lines = []
    for _ in range(rng.randint(min_steps, max_steps)):
        n = rng.randint(1, max_operand)
        if rng.random() < 0.5 or n > value:  # never below zero: the story must make sense
            story.append(f"Then {name} {rng.choice(GAIN).format(n=n)}.")
            lines.append(f"{value} + {n} = {value + n}")
            value += n
        else:
            story.append(f"Then {name} {rng.choice(LOSS).format(n=n)}.")
            lines.append(f"{value} - {n} = {value - n}")
            value -= n
    story.append(f"How many {item} does {name} have now?")
    return {"question": " ".join(story), "answer": "\n".join(lines) + f"\n#### {value}"}


def split(seed: int, n_test: int, min_steps: int, max_steps: int, max_operand: int) -> tuple[list[str], list[dict]]:
    """The fixed held-out split: ``n_test`` distinct problems from a seed of their own.

    Returns the set of held-out questions (so training never samples them) and the rows.
    """
    rng = random.Random(f"arith-test-{seed}")
    rows, seen = [], set()
    tries = 0
    while len(rows) < n_test:
        row = make_problem(rng, min_steps, max_steps, max_operand)
        tries += 1
        if tries > 100 * n_test:
            raise ValueError(f"cannot draw {n_test} distinct test problems at this difficulty")
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return sorted(seen), rows


def train_rows(seed: int, n: int, held_out: set[str], min_steps: int, max_steps: int, max_operand: int) -> list[dict]:
    """``n`` training problems (repeats allowed, held-out questions never)."""
    rng = random.Random(f"arith-train-{seed}")
    rows = []
    while len(rows) < n:
        row = make_problem(rng, min_steps, max_steps, max_operand)
        if row["question"] not in held_out:
            rows.append(row)
    return rows
