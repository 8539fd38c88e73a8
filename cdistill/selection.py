"""How a tuning study picks each method's settings: one rule, declared in the config before anything runs.

The rule (``selection`` in conf/config.yaml): among a method's trials whose validation rate of the constraint
metric (``never_exceeded_rate`` by default: no prefix above d) is at least ``target``, the one with the highest
validation ``metric`` (sampled accuracy); when no trial of the method reaches the target, the one that comes
closest to it (highest constraint rate, then highest metric). Every method is judged by the same rule, whatever
its training does with d.

``objective`` turns one trial's validation summary into the number the sweeper maximises, ordered exactly as
``select`` orders trials, so the sweeper's own "best" and the selection agree. Pure: no files, no models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FAILED = -3.0  # the score of a trial whose training failed (a non-finite run): below every trial that finished
RATES = ("satisfaction_rate", "never_exceeded_rate", "success_rate", "success_never_exceeded_rate")
METRICS = ("accuracy_sampled", "accuracy_greedy", "success_rate", "success_never_exceeded_rate")


class SelectionError(ValueError):
    """A study that cannot be selected from as declared (a trial read on the test split, a missing metric)."""


@dataclass(frozen=True)
class Rule:
    metric: str = "accuracy_sampled"
    constraint_metric: str = "never_exceeded_rate"
    target: float = 0.6

    @classmethod
    def of(cls, cfg) -> Rule:
        return cls(str(cfg.metric), str(cfg.constraint_metric), float(cfg.target))

    def describe(self) -> str:
        return (f"the highest validation {self.metric} among trials whose validation {self.constraint_metric} is at "
                f"least {self.target:g}; when no trial reaches {self.target:g}, the trial with the highest "
                f"{self.constraint_metric} (then the highest {self.metric})")


def _value(summary: dict, key: str) -> float:
    v = summary.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise SelectionError(f"a trial's summary has no finite {key!r} (it has {sorted(summary)[:8]} ...)")
    return float(v)


def feasible(summary: dict, rule: Rule) -> bool:
    return _value(summary, rule.constraint_metric) >= rule.target


def objective(summary: dict, rule: Rule) -> float:
    """The trial's score for the sweeper: its ``metric`` (in [0, 1]) when it meets the target; otherwise its
    shortfall below the target minus 1 (in [-2, -1)), so that every feasible trial ranks above every infeasible
    one and infeasible ones rank by how close they come; ``FAILED`` for a trial whose training failed."""
    if summary.get("failed"):
        return FAILED
    rate, value = _value(summary, rule.constraint_metric), _value(summary, rule.metric)
    return value if rate >= rule.target else rate - rule.target - 1.0


@dataclass(frozen=True)
class Trial:
    number: int
    overrides: tuple[str, ...]  # the settings the sweeper drew, as Hydra overrides
    summary: dict
    path: str = ""


def select(trials: list[Trial], rule: Rule) -> tuple[Trial, bool]:
    """The selected trial and whether it met the target. Ties go to the earlier trial (a fixed order)."""
    if not trials:
        raise SelectionError("no finished trial to select from")
    for t in trials:
        if t.summary.get("failed"):
            continue
        split = t.summary.get("split", "test")
        if split != "validation":  # selection must never read the test split
            raise SelectionError(f"trial {t.number} ({t.path}) was evaluated on the {split} split; tuning and "
                                 "selection read the validation split only (eval.split=validation)")
    failed = [t for t in trials if t.summary.get("failed")]
    trials = [t for t in trials if not t.summary.get("failed")]
    if not trials:
        raise SelectionError(f"every trial failed (first: {failed[0].summary['failed']})")
    ok = [t for t in trials if feasible(t.summary, rule)]
    if ok:
        best = max(ok, key=lambda t: (_value(t.summary, rule.metric), -t.number))
        return best, True
    best = max(trials, key=lambda t: (_value(t.summary, rule.constraint_metric), _value(t.summary, rule.metric),
                                      -t.number))
    return best, False
