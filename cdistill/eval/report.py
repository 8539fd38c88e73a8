"""``cdistill report <dir> [--verdicts FILE]``: every finished run below a directory, as replicate groups with 95%
intervals, the verdicts of the comparisons declared before the runs (``verdicts.yaml``), exploratory differences
between every other pair, a Pareto plot with error bars and training curves with seed bands.

Reads only what runs wrote (``summary.json``, ``config.yaml``, ``eval_samples.jsonl``, ``metrics.jsonl``, the
Hydra ``.hydra/overrides.yaml``; ``evals.jsonl`` for the start student per family), so it works on any finished
sweep, and writes ``report.md``, ``report.html``, ``pareto.png`` and ``curves.png`` into that directory, and
``families.png`` with a per-family table when the runs evaluated families of problems (``task.family_field``). Runs
with several constraints (one budget per teacher) get a per-constraint table and, with families, a divergence
allocation table and ``allocation.png``.

The intervals are 95% intervals over seeds and problems (``cdistill.eval.stats.group_interval``: the variance
of the mean from the seed means and from the problem means, Student's t at Welch–Satterthwaite's degrees of
freedom); a rate of one run, or one whose estimated variance is 0, gets Wilson's score interval over its problems
(``rate_interval``). Verdicts ("A better", "B better", "equivalent within ±m", "no detectable difference") are given
only for the comparisons a ``verdicts.yaml`` declares, on its one primary metric, with Holm's correction across them
(``cdistill.eval.stats.declared_verdicts``); everything else is exploratory and says so.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cdistill.errors import fail
from cdistill.eval.plots import plot_allocation, plot_curves, plot_families, plot_pareto
from cdistill.eval.replicates import Group, finished_runs, group_runs
from cdistill.eval.stats import (
    PAIRED,
    UNPAIRED,
    Difference,
    Interval,
    Verdict,
    declared_verdicts,
    group_interval,
    method_difference,
    rate_interval,
)

# (column, metric, format): metrics read per problem get an interval; the others are means over the seeds
WITH_INTERVALS = [
    ("acc (sampled)", "accuracy_sampled", "{:.3f}"), ("acc (greedy)", "accuracy_greedy", "{:.3f}"),
    ("mean C(y)", "divergence_mean", "{:.2f}"), ("satisfied at end", "satisfaction_rate", "{:.3f}"),
    ("never exceeded", "never_exceeded_rate", "{:.3f}"), ("success at end", "success_rate", "{:.3f}"),
    ("success never exceeded", "success_never_exceeded_rate", "{:.3f}"),
    ("no answer", "unparsed_rate", "{:.3f}"),
]
PLAIN = [("start acc (mean)", "start_accuracy_sampled", "{:.3f}"),
         ("teacher acc (mean)", "teacher_accuracy_sampled", "{:.3f}"), ("steps", "steps", "{:.0f}"),
         ("train s", "train_seconds", "{:.0f}")]
# what the exploratory differences show: (metric, name)
COMPARED = [("accuracy_sampled", "acc (sampled)"), ("satisfaction_rate", "satisfied at end"),
            ("never_exceeded_rate", "never exceeded"), ("divergence_mean", "mean C(y)")]
# per-problem values in [0, 1]: their intervals must not collapse at 0 or 1 (stats.rate_interval)
RATES = ("accuracy_sampled", "accuracy_greedy", "satisfaction_rate", "never_exceeded_rate", "success_rate",
         "success_never_exceeded_rate", "unparsed_rate")
LOWER_IS_BETTER = ("divergence_mean", "unparsed_rate")
METRIC_NAMES = {metric: column for column, metric, _ in WITH_INTERVALS}
VERDICTS_FILE = "verdicts.yaml"
DECLARATION_KEYS = ("comparisons", "primary", "alpha", "equivalence_margin")


def latest_judgement(run_dir: Path) -> str | None:
    """'win/loss/tie' of the run's newest ``cdistill judge`` against its reference, if it was judged."""
    found = sorted((run_dir / "judge").glob("*/judge.json"))
    if not found:
        return None
    j = json.loads(found[-1].read_text())
    text = f"{j['win_rate']:.2f}/{j['loss_rate']:.2f}/{j['tie_rate']:.2f} vs {Path(j['run_b']).name}"
    return text + (f" ({j['failed_rate']:.2f} failed)" if j.get("failed_rate") else "")


def command_of(run_dir: Path) -> str:
    """The command line that made a run, from the overrides Hydra recorded."""
    p = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(p.read_text()) if p.is_file() else None
    return "cdistill train " + " ".join(overrides or []) if overrides is not None else "(not recorded)"


def intervals_of(groups: list[Group]) -> dict:
    """``{(group index, metric): Interval or None}`` for every metric with per-problem records."""
    out = {}
    for i, g in enumerate(groups):
        for _, metric, _ in WITH_INTERVALS:
            m = g.matrix(metric)
            out[(i, metric)] = _safely(interval_for(metric), m, what=f"{g.name}: {metric}") if m is not None else None
    return out


def interval_for(metric: str):
    """The interval of a group's metric: Wilson-backed for a rate (``rate_interval``), else ``group_interval``."""
    return rate_interval if metric in RATES else group_interval


def _safely(fn, *args, what: str):
    """``fn(*args)``, or None with a warning when a run's records hold something it cannot use (NaN, nothing)."""
    try:
        return fn(*args)
    except ValueError as e:
        print(f"cdistill report: no interval for {what} ({e})", file=sys.stderr)
        return None


def cell(interval: Interval | None, fallback: float | None, spec: str) -> str:
    if interval is not None:
        return f"{spec.format(interval.mean)} [{spec.format(interval.low)}, {spec.format(interval.high)}]"
    return "-" if fallback is None else spec.format(fallback) + " (no interval)"


def table(groups: list[Group], intervals: dict) -> str:
    cols = ["method", "settings", "constraint", "seeds", *(c for c, _, _ in WITH_INTERVALS), *(c for c, _, _ in PLAIN)]
    rows = []
    for i, g in enumerate(groups):
        seeds = ",".join(str(s) for s in g.seeds) if all(s is not None for s in g.seeds) else str(len(g.runs))
        row = [g.method, g.label or "-", g.constraint_text, seeds]
        row += [cell(intervals[(i, m)], g.mean(m), f) for _, m, f in WITH_INTERVALS]
        row += ["-" if g.mean(k) is None else f.format(g.mean(k)) for _, k, f in PLAIN]
        rows.append(row)
    return markdown(cols, rows)


def markdown(cols: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
                      *("| " + " | ".join(r) + " |" for r in rows)])


@dataclass
class Comparison:
    a: Group
    b: Group
    threshold: float  # the budget both are read at
    diffs: dict  # metric -> Difference (A − B; its model says how the seeds were used)

    @property
    def model(self) -> str:
        return model_text(next(iter(self.diffs.values())))


def pairs(groups: list[Group]) -> list[tuple[Group, Group, float]]:
    """Which groups to compare, and at which budget, among groups that measure the same thing (the same cost read
    the same way, against the same teacher: ``Group.comparable``): any two at the same d; and a cmdp group against
    every group whose training never reads d (soft_penalty, grpo, ...) at cmdp's d, the other's constraint read again
    there. Two groups trained on different budgets are not compared: their difference is the budget, not the
    method."""
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if not a.comparable(b):
                continue
            first, second = (b, a) if b.method == "cmdp" and a.method != "cmdp" else (a, b)
            if a.threshold == b.threshold:
                out.append((first, second, first.threshold))
            elif first.method == "cmdp" and not second.trains_on_budget:
                out.append((first, second, first.threshold))
    return out


def compare(a: Group, b: Group, threshold: float, metrics: list[str] | None = None) -> Comparison | None:
    """Differences A − B on ``metrics`` (default: the exploratory ones), problem by problem, each read at
    ``threshold``, with the model the two groups' seeds allow (``stats.method_difference``: paired by seed,
    unpaired, or "these two runs"); None when the two did not evaluate the same problems (or kept no per-problem
    records)."""
    if a.questions() is None or a.questions() != b.questions():
        return None
    diffs = {}
    for metric in metrics or [m for m, _ in COMPARED]:
        ma = a.matrix(metric, None if threshold == a.threshold else threshold)
        mb = b.matrix(metric, None if threshold == b.threshold else threshold)
        if ma is None or mb is None:  # records written before the metric existed
            continue
        diff = _safely(method_difference, ma, mb, a.seeds, b.seeds, 0.95, metric in RATES,
                       what=f"{a.name} vs {b.name}: {metric}")
        if diff is not None:
            diffs[metric] = diff
    return Comparison(a, b, threshold, diffs) if diffs else None


def _seeds(seeds) -> str:
    return ",".join("?" if s is None else str(s) for s in seeds)


def model_text(d: Difference) -> str:
    """What a difference's interval is over, in words: a method comparison (paired or unpaired seeds), or only these
    runs (a side with one seed)."""
    if d.model == PAIRED:
        return f"paired by seed ({_seeds(d.seeds_a)})"
    if d.model == UNPAIRED:
        return f"unpaired seeds (A {_seeds(d.seeds_a)}; B {_seeds(d.seeds_b)})"
    if len(d.seeds_a) == 1 and len(d.seeds_b) == 1:
        same = d.seeds_a == d.seeds_b
        return f"these two runs (seed {_seeds(d.seeds_a)})" if same else \
            f"these two runs (seeds {_seeds(d.seeds_a)} and {_seeds(d.seeds_b)})"
    def side(seeds) -> str:
        return f"seed {_seeds(seeds)}" if len(seeds) == 1 else f"mean of seeds {_seeds(seeds)}"

    return f"these runs (A {side(d.seeds_a)}; B {side(d.seeds_b)}; no seed variance)"


def _spec(metric: str) -> str:
    """The format of a signed difference of ``metric``."""
    return "{:+.2f}" if metric == "divergence_mean" else "{:+.3f}"


def diff_cell(d: Difference, metric: str) -> str:
    """``Δ [low, high]`` at 95%: a difference and its interval, no verdict."""
    spec = _spec(metric)
    return f"{spec.format(d.mean)} [{spec.format(d.low)}, {spec.format(d.high)}]"


def exploratory_table(comparisons: list[Comparison]) -> str:
    cols = ["A", "B", "at d", "interval over", *(f"Δ {name} (A − B)" for _, name in COMPARED)]
    rows = []
    for c in comparisons:
        rows.append([c.a.name, c.b.name, f"{c.threshold:g}", c.model,
                     *(diff_cell(c.diffs[m], m) if m in c.diffs else "-" for m, _ in COMPARED)])
    return markdown(cols, rows)


def matched(groups: list[Group], intervals: dict) -> list[tuple[Group, Group, str]]:
    """The hard budget against the best fixed penalty at matched divergence: for each cmdp group, the
    soft_penalty group with the highest sampled accuracy among those whose mean C(y) is not above cmdp's
    interval for it; without one, the least divergent soft_penalty group (said so). The choice reads the same test
    problems the difference is then measured on, so these rows are exploratory (a null simulation of this
    selection gave 6.6% "soft_penalty better" at a nominal 2.5%)."""
    out = []
    index = {id(g): i for i, g in enumerate(groups)}

    def value(g, metric):
        iv = intervals.get((index[id(g)], metric))
        return iv.mean if iv else g.mean(metric)

    for a in (g for g in groups if g.method == "cmdp"):
        fixed = [g for g in groups if g.method == "soft_penalty" and g.comparable(a)]
        a_div = intervals.get((index[id(a)], "divergence_mean"))
        if not fixed or a_div is None:
            continue
        within = [g for g in fixed if value(g, "divergence_mean") <= a_div.high]
        if within:
            best = max(within, key=lambda g: value(g, "accuracy_sampled"))
            why = "the most accurate fixed penalty whose mean C(y) is not above cmdp's interval"
        else:
            best = min(fixed, key=lambda g: value(g, "divergence_mean"))
            why = "no fixed penalty was as little divergent: the least divergent one"
        out.append((a, best, why))
    return out


class DeclarationError(ValueError):
    """A ``verdicts.yaml`` that cannot be read or does not fit the runs: one line, for ``cdistill: error:``."""


@dataclass(frozen=True)
class Declaration:
    """The comparisons declared before the runs were judged (``verdicts.yaml``): the only ones that get verdicts."""

    comparisons: list[tuple[str, str]]  # (A, B): a method name, or a row's full name ("cmdp d=10")
    primary: str  # one metric for every comparison (a key of WITH_INTERVALS)
    alpha: float = 0.05  # family-wise level (Holm across the comparisons)
    margin: float | None = None  # equivalence margin on the primary metric (TOST); None: no claim of equivalence
    source: str = VERDICTS_FILE


def parse_declaration(tree, source: str = VERDICTS_FILE) -> Declaration:
    """A ``Declaration`` from the parsed YAML of a verdicts file::

        comparisons: [[cmdp, lagrangian], [cmdp, soft_penalty]]  # required: pairs A, B, named by method (or row name)
        primary: accuracy_sampled                                 # required: a metric of the report's table
        alpha: 0.05                                               # optional (0.05), in (0, 0.5)
        equivalence_margin: 0.02                                  # optional (none: no equivalence claims), > 0

    Anything else (an unknown key, a missing one, a wrong type or range) raises ``DeclarationError`` in one line."""
    def bad(what: str):
        raise DeclarationError(f"{source}: {what}")

    if not isinstance(tree, dict):
        bad(f"expected a mapping with keys {', '.join(DECLARATION_KEYS)}, got {type(tree).__name__}")
    unknown = sorted(str(k) for k in tree if k not in DECLARATION_KEYS)
    if unknown:
        bad(f"unknown key {', '.join(unknown)}; expected {', '.join(DECLARATION_KEYS)}")
    for key in ("comparisons", "primary"):
        if key not in tree:
            bad(f"{key} is required")
    comparisons = tree["comparisons"]
    if not isinstance(comparisons, list) or not comparisons:
        bad("comparisons must be a non-empty list of [A, B] pairs")
    out, seen = [], set()
    for c in comparisons:
        if not (isinstance(c, list | tuple) and len(c) == 2 and all(isinstance(x, str) and x for x in c)):
            bad(f"each comparison must be a pair [A, B] of method names, got {c!r}")
        if c[0] == c[1]:
            bad(f"comparison [{c[0]}, {c[1]}] compares a method with itself")
        if frozenset(c) in seen:
            bad(f"comparison [{c[0]}, {c[1]}] is declared twice")
        seen.add(frozenset(c))
        out.append((c[0], c[1]))
    primary = tree["primary"]
    if primary not in METRIC_NAMES:
        bad(f"primary must be one of {', '.join(METRIC_NAMES)}; got {primary!r}")
    alpha = tree.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 0.5:
        bad(f"alpha must be a number in (0, 0.5), got {alpha!r}")
    margin = tree.get("equivalence_margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not 0 < margin < math.inf):
        bad(f"equivalence_margin must be a positive number (or null), got {margin!r}")
    return Declaration(out, primary, float(alpha), None if margin is None else float(margin), source)


def read_declaration(path: Path) -> Declaration:
    """The ``Declaration`` in a verdicts file (``parse_declaration``)."""
    try:
        tree = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DeclarationError(f"{path}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise DeclarationError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    return parse_declaration(tree, str(path))


def resolve(decl: Declaration, groups: list[Group]) -> list[tuple[Group, Group, float]]:
    """Each declared pair as two replicate groups and the budget both are read at. A name is a row's full name or
    a method name that exactly one group has; a comparison is refused (``DeclarationError``, one line) when a name
    matches no group or several, or when the two measure different things (``Group.comparable``: their constraint,
    teacher, further constraints) or were trained on different budgets."""
    def group_of(name: str) -> Group:
        found = [g for g in groups if g.name == name] or [g for g in groups if g.method == name]
        if not found:
            raise DeclarationError(f"{decl.source}: no replicate group of method {name!r} here (groups: "
                                   f"{', '.join(g.name for g in groups)})")
        if len(found) > 1:
            raise DeclarationError(f"{decl.source}: {name!r} is ambiguous, it matches {len(found)} groups ("
                                   f"{', '.join(g.name for g in found)}); name one by its row name")
        return found[0]

    out = []
    for a_name, b_name in decl.comparisons:
        a, b = group_of(a_name), group_of(b_name)
        if a is b:
            raise DeclarationError(f"{decl.source}: {a_name!r} and {b_name!r} are the same group ({a.name})")
        if a.constraint != b.constraint:
            raise DeclarationError(f"{decl.source}: {a.name} and {b.name} measure different constraints "
                                   f"({a.constraint_text}; {b.constraint_text})")
        if a.teacher != b.teacher:
            differ = sorted(k for k in dict(a.teacher).keys() | dict(b.teacher).keys()
                            if dict(a.teacher).get(k) != dict(b.teacher).get(k))
            raise DeclarationError(f"{decl.source}: {a.name} and {b.name} read C(y) against different teachers "
                                   f"({', '.join(differ) or 'one run recorded no config'})")
        if a.other_budgets != b.other_budgets:  # a joint rate of other budgets is another quantity
            raise DeclarationError(f"{decl.source}: {a.name} and {b.name} are held to different further constraints "
                                   f"({a.constraint_text}; {b.constraint_text})")
        if a.trains_on_budget and b.trains_on_budget and a.threshold != b.threshold:
            raise DeclarationError(f"{decl.source}: {a.name} and {b.name} were trained on different budgets "
                                   f"(d = {a.threshold:g} and {b.threshold:g})")
        out.append((a, b, a.threshold if a.trains_on_budget or not b.trains_on_budget else b.threshold))
    return out


@dataclass
class Declared:
    """The declared comparisons, computed: each one's difference on the primary metric and its verdict."""

    decl: Declaration
    rows: list[tuple[Group, Group, float, Difference, Verdict]]


def judge(decl: Declaration, groups: list[Group]) -> Declared:
    """Resolve the declaration, measure each comparison's difference on its primary metric and decide the verdicts
    together (``stats.declared_verdicts``); a comparison that cannot be measured is an error, not a silent gap."""
    resolved = resolve(decl, groups)
    diffs = []
    for a, b, d in resolved:
        c = compare(a, b, d, [decl.primary])
        if c is None or decl.primary not in c.diffs:
            raise DeclarationError(f"{decl.source}: cannot compare {a.name} with {b.name} on {decl.primary}: they "
                                   "did not evaluate the same problems, or kept no per-problem records "
                                   "(eval_samples.jsonl) with it")
        diffs.append(c.diffs[decl.primary])
    higher = decl.primary not in LOWER_IS_BETTER
    verdicts = declared_verdicts(diffs, higher, [(a.name, b.name) for a, b, _ in resolved], decl.alpha, decl.margin)
    return Declared(decl, [(a, b, d, diff, v) for (a, b, d), diff, v in zip(resolved, diffs, verdicts, strict=True)])


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def declared_table(declared: Declared) -> str:
    decl = declared.decl
    spec = _spec(decl.primary)
    level = f"{100 * (1 - decl.alpha):g}%"
    cols = ["A", "B", "at d", "interval over", f"Δ {METRIC_NAMES[decl.primary]} (A − B)", f"{level} interval",
            "t (df)", "raw p", "Holm p", *(["TOST p (raw; Holm)"] if decl.margin is not None else []), "verdict"]
    rows = []
    for a, b, d, diff, v in declared.rows:
        low, high = diff.bounds(1 - decl.alpha)
        t = "-" if diff.se == 0 else f"{diff.mean / diff.se:+.2f} ({diff.df:.1f})"
        tested = v.tested
        row = [a.name, b.name, f"{d:g}", model_text(diff), spec.format(diff.mean),
               f"[{spec.format(low)}, {spec.format(high)}]", t if tested and diff.rates is None else "-",
               _p(diff.p_value) if tested else "-", _p(v.p_holm)]
        if decl.margin is not None:
            row.append(f"{_p(v.p_equivalence)}; {_p(v.p_equivalence_holm)}" if tested else "-")
        rows.append(row + [f"**{v.text}**"])
    return markdown(cols, rows)


def declared_section(declared: Declared) -> list[str]:
    decl = declared.decl
    tested = [r for r in declared.rows if r[4].tested]
    one_seed = [r for r in declared.rows if not r[4].tested]
    direction = "lower" if decl.primary in LOWER_IS_BETTER else "higher"
    margin = (f"equivalence margin ±{decl.margin:g} on it (two one-sided tests, TOST)" if decl.margin is not None
              else "no equivalence margin (so no claim of equivalence)")
    lines = ["## Declared verdicts (Holm-corrected, family-wise alpha)", "",
             f"Declared in `{decl.source}`: primary metric **{METRIC_NAMES[decl.primary]}** (`{decl.primary}`, "
             f"{direction} is better) for every comparison; family-wise alpha = {decl.alpha:g}, Holm's step-down "
             f"across the {len(tested)} comparison{'s' if len(tested) != 1 else ''} that can be tested; {margin}. "
             "Δ = A − B over seeds and problems; its interval, t and raw p come from one model (t = Δ / standard "
             "error, Student's t at Welch–Satterthwaite's degrees of freedom, the seed-to-seed variance of each "
             f"method inside the standard error), so the {100 * (1 - decl.alpha):g}% interval excludes 0 exactly "
             "when the raw p is below alpha. The verdict reads the Holm-adjusted p's: *A better* / *B better* when "
             "that of \"no difference\" is at most alpha"
             + ("; *equivalent within ±m* when that of the TOST is (the (1 − 2·alpha_adjusted) interval lies inside "
                "±m)" if decl.margin is not None else "")
             + "; otherwise *no detectable difference*, which does not say that the two are equal."
             + (" A comparison's two claims (a difference; an equivalence) are stepped down together, and a step's "
                "multiplier counts the comparisons with a claim not yet made, since at most one of a comparison's two "
                "null hypotheses can be true (Shaffer's refinement of Holm; without a margin it is Holm's procedure)."
                if decl.margin is not None else "")
             + " (A rate whose differences are all equal is read with Newcombe's score interval, and its p inverts "
             "it.)", "",
             declared_table(declared), ""]
    if one_seed:
        names = "; ".join(f"{a.name} vs {b.name}" for a, b, *_ in one_seed)
        lines += [f"No method verdict is possible with one seed ({names}): one trained model of a method shows "
                  "nothing of how another seed would have trained, so the interval over problems on such a row says "
                  "whether *these two runs* differ, not whether the methods do. Train at least two seeds of each "
                  "(five for a useful interval).", ""]
    return lines


@dataclass
class FamilyRow:
    """One group's numbers on one family of problems (``task.family_field``): the final evaluation with 95%
    intervals over seeds and the family's problems, and the start student's (mean over seeds)."""

    group: Group
    family: str
    n_problems: int
    accuracy: Interval | None
    gain: Interval | None  # accuracy minus the start student's on the family
    divergence: Interval | None
    satisfied: Interval | None
    start_accuracy: float | None
    start_divergence: float | None
    teacher_accuracy: float | None  # the teacher's sampled accuracy on the family (mean over seeds' evaluations)


def family_rows(groups: list[Group]) -> list[FamilyRow]:
    """Where each group spends its divergence: per family, its final accuracy, the gain over the start student and
    mean C(y); empty when no run evaluated families."""
    return [family_row(g, fam) for g in groups for fam in g.families()]


def family_row(g: Group, family: str) -> FamilyRow:
    """The gain subtracts each seed's start accuracy on the family, one number (the start evaluation keeps no
    per-problem records): the start's sampling noise across seeds is in the interval, across problems it is not,
    and problems' difficulty is not paired out."""
    def interval(metric: str, m):
        if m is None or m.size == 0:
            return None
        return _safely(interval_for(metric), m, what=f"{g.name} {family}: {metric}")

    acc = g.matrix("accuracy_sampled", family=family)
    starts = [start_of(r, family) for r in g.runs]  # in the order of the matrix's rows
    known = [x for x in starts if x is not None]
    gain = None
    if acc is not None and len(known) == len(starts):
        gain = interval("gain over start", acc - np.array([x["accuracy_sampled"] for x in known])[:, None])

    def start_mean(metric: str) -> float | None:
        return float(np.mean([x[metric] for x in known])) if known else None

    teacher = [((r.summary.get("teacher_families") or {}).get(family) or {}).get("accuracy_sampled") for r in g.runs]
    teacher = [t for t in teacher if t is not None]

    return FamilyRow(g, family, 0 if acc is None else acc.shape[1], interval("accuracy_sampled", acc), gain,
                     interval("divergence_mean", g.matrix("divergence_mean", family=family)),
                     interval("satisfaction_rate", g.matrix("satisfaction_rate", family=family)),
                     start_mean("accuracy_sampled"), start_mean("divergence_mean"),
                     float(np.mean(teacher)) if teacher else None)


def start_of(run, family: str) -> dict | None:
    """The start student's report on ``family`` (from the run's step-0 evaluation), or None."""
    return ((run.start or {}).get("families") or {}).get(family)


def family_table(rows: list[FamilyRow]) -> str:
    cols = ["method", "settings", "constraint", "seeds", "family", "problems", "teacher acc", "start acc",
            "acc (sampled)", "Δ acc over start", "start C(y)", "mean C(y)", "satisfied at end"]
    out = []
    for r in rows:
        g = r.group
        seeds = ",".join(str(s) for s in g.seeds) if all(s is not None for s in g.seeds) else str(len(g.runs))
        plain = ["-" if v is None else spec.format(v) for v, spec in ((r.teacher_accuracy, "{:.3f}"),
                                                                      (r.start_accuracy, "{:.3f}"),
                                                                      (r.start_divergence, "{:.2f}"))]
        out.append([g.method, g.label or "-", g.constraint_text, seeds, r.family, str(r.n_problems), plain[0], plain[1],
                    cell(r.accuracy, None, "{:.3f}"), cell(r.gain, None, "{:+.3f}"), plain[2],
                    cell(r.divergence, None, "{:.2f}"), cell(r.satisfied, None, "{:.3f}")])
    return markdown(cols, out)


# what the per-constraint tables read of each constraint: (column, metric, format)
PER_CONSTRAINT = [("satisfied", "satisfaction_rate", "{:.3f}"), ("never exceeded", "never_exceeded_rate", "{:.3f}"),
                  ("mean C(y)", "divergence_mean", "{:.2f}")]
JOINT = [("satisfied (all)", "satisfaction_rate", "{:.3f}"), ("never exceeded (all)", "never_exceeded_rate", "{:.3f}")]


def constraint_names(groups: list[Group]) -> list[str]:
    """Every constraint name of the groups with several constraints, the first constraint's first; [] when no group
    has more than one (the report is then as it was before several constraints existed)."""
    return list(dict.fromkeys(n for g in groups for n in g.budgets))


def budget_key(g: Group, name: str, metric: str, names: list[str]) -> str | None:
    """Which of ``g``'s metrics is ``metric`` of constraint ``name``: ``metric@name``; for a single-constraint group,
    its plain metric under the first name (its one constraint is the one against ``model.teacher``); None when the
    group has no such constraint."""
    if g.budgets:
        return f"{metric}@{name}" if name in g.budgets else None
    return metric if name == names[0] else None


def budget_threshold(g: Group, name: str, names: list[str]) -> float | None:
    if g.budgets:
        return (g.constraints.get(name) or {}).get("threshold")
    return g.threshold if name == names[0] else None


def family_mean(g: Group, family: str, key: str) -> float | None:
    """The mean over seeds of a family's ``key`` in the summaries (for runs that kept no per-problem records)."""
    vals = [((r.summary.get("families") or {}).get(family) or {}).get(key) for r in g.runs]
    vals = [v for v in vals if isinstance(v, int | float)]
    return sum(vals) / len(vals) if vals else None


def reading(g: Group, key: str | None, metric: str, family: str | None = None) -> tuple[Interval | None, float | None]:
    """``(interval, mean)`` of ``g``'s ``key`` (a metric, or ``metric@name``) over its seeds and problems, on the
    problems of ``family`` when given: the interval from the per-problem records as the main table's, the mean from
    the summaries for runs without them."""
    if key is None:
        return None, None
    m = g.matrix(key, family=family)
    where = f"{g.name}{f' {family}' if family else ''}: {key}"
    interval = _safely(interval_for(metric), m, what=where) if m is not None and m.size else None
    return interval, g.mean(key) if family is None else family_mean(g, family, key)


def constraint_table(groups: list[Group], names: list[str]) -> str:
    cols = ["method", "settings", "constraint", "seeds",
            *(f"{c} @{n}" for n in names for c, _, _ in PER_CONSTRAINT), *(c for c, _, _ in JOINT)]
    rows = []
    for g in groups:
        row = [g.method, g.label or "-", g.constraint_text, _group_seeds(g)]
        row += [cell(*reading(g, budget_key(g, n, m, names), m), f) for n in names for _, m, f in PER_CONSTRAINT]
        row += [cell(*reading(g, m, m), f) for _, m, f in JOINT]
        rows.append(row)
    return markdown(cols, rows)


def _group_seeds(g: Group) -> str:
    return ",".join(str(s) for s in g.seeds) if all(s is not None for s in g.seeds) else str(len(g.runs))


@dataclass
class AllocationRow:
    """One group's divergence on one family, per constraint: ``divergence[name]`` and ``satisfied[name]`` are
    ``(interval, mean)`` pairs (``reading``); ``thresholds[name]`` its budget there (None: no such constraint)."""

    group: Group
    family: str
    n_problems: int
    divergence: dict
    satisfied: dict
    joint: tuple
    thresholds: dict


def allocation_rows(groups: list[Group], names: list[str]) -> list[AllocationRow]:
    """How each group divides its divergence among the families, constraint by constraint; empty without
    families."""
    out = []
    for g in groups:
        for fam in g.families():
            acc = g.matrix("accuracy_sampled", family=fam)
            out.append(AllocationRow(
                g, fam, 0 if acc is None else acc.shape[1],
                {n: reading(g, budget_key(g, n, "divergence_mean", names), "divergence_mean", fam) for n in names},
                {n: reading(g, budget_key(g, n, "satisfaction_rate", names), "satisfaction_rate", fam) for n in names},
                reading(g, "satisfaction_rate", "satisfaction_rate", fam),
                {n: budget_threshold(g, n, names) for n in names}))
    return out


def allocation_table(rows: list[AllocationRow], names: list[str]) -> str:
    cols = ["method", "settings", "seeds", "family", "problems",
            *(f"{c} @{n}" for n in names for c in ("mean C(y)", "satisfied")), "satisfied (all)"]
    out = []
    for r in rows:
        g = r.group
        row = [g.method, g.label or "-", _group_seeds(g), r.family, str(r.n_problems)]
        for n in names:
            row += [cell(*r.divergence[n], "{:.2f}"), cell(*r.satisfied[n], "{:.3f}")]
        out.append(row + [cell(*r.joint, "{:.3f}")])
    return markdown(cols, out)


def constraint_sections(root: Path, groups: list[Group], names: list[str]) -> tuple[list[str], list[str]]:
    """The report's sections for runs with several constraints, and the tables to print; writes
    ``allocation.png`` when the runs evaluated families."""
    first = names[0]
    shown = [constraint_table(groups, names)]
    parts = ["## Per constraint", "",
             f"These runs have several constraints (one budget per teacher: {', '.join(f'`{n}`' for n in names)}). "
             "Everywhere else in this report *satisfied at end*, *never exceeded* and their success rates are joint "
             f"(every budget met by the same sample) and *mean C(y)* is the first constraint's (`{first}`); here each "
             "constraint on its own (*@name*), with the same 95% intervals over seeds and problems, beside the joint "
             f"readings (*all*). A row with a single constraint has only its `{first}`.", "",
             f"Comparisons read at another budget d (the exploratory differences, *read at d*) move the first "
             f"constraint's (`{first}`) budget only; the other constraints keep their own.", "",
             shown[0], ""]
    rows = allocation_rows(groups, names)
    if rows:
        shown.append(allocation_table(rows, names))
        parts += ["## Divergence allocation per family", "",
                  "Where each row spends each budget: per family of problems (`task.family_field`), the mean C(y) of "
                  "every constraint and the share of samples within it, with 95% intervals over seeds and the "
                  "family's problems; the figure draws the mean C(y) per family, one panel per constraint, its budgets "
                  "as dashed lines.", "", shown[1], "", "![divergence allocation per family](allocation.png)", ""]
        plot_allocation(rows, names, root / "allocation.png")
    return parts, shown


def write_report(root: Path, groups: list[Group], declaration: Declaration | None = None) -> str:
    """Write ``report.md``, ``report.html`` and the figures into ``root``; return the tables for the terminal.
    A ``declaration`` that does not fit the groups raises ``DeclarationError`` before anything is written."""
    declared = judge(declaration, groups) if declaration is not None else None
    intervals = intervals_of(groups)
    text = table(groups, intervals)
    comparisons = [c for a, b, d in pairs(groups) if (c := compare(a, b, d)) is not None]
    parts = [f"# cdistill report: {root}", "", "Means with 95% intervals over seeds and evaluation problems "
             "(the variance of the mean from seed means and from problem means, Student's t at Welch–Satterthwaite's "
             "degrees of freedom, clipped to [0, 1] for a rate; one run's rate, or a rate equal on every problem and "
             "seed: Wilson's score interval over its problems). Runs that differ only in "
             "`seed` are one row. *satisfied at end*: C(y) <= d; *never exceeded*: no prefix's C_t above d (the "
             "Sauté reading, under which cmdp forfeits the reward); *no answer*: completions from which no final "
             "answer could be extracted; *read at d*: a method whose training ignores d, its C(y) read at one.", "",
             text, ""]
    names = constraint_names(groups)
    several, several_shown = constraint_sections(root, groups, names) if names else ([], [])
    parts += several
    if declared is not None:
        parts += declared_section(declared)
    else:
        parts += [f"No comparison was declared (a `{VERDICTS_FILE}` in this directory, or `cdistill report <dir> "
                  "--verdicts FILE`), so this report gives no verdict: every difference below is exploratory.", ""]
    best = matched(groups, intervals)
    by_pair = {(id(c.a), id(c.b)): c for c in comparisons}
    lines = []
    for a, b, why in best:
        c = by_pair.get((id(a), id(b)))
        if c is not None and "accuracy_sampled" in c.diffs:
            acc = c.diffs["accuracy_sampled"]
            div = c.diffs.get("divergence_mean")
            lines.append(f"- {a.name} vs {b.name} ({why}, chosen on these same test problems): Δ acc "
                         f"{diff_cell(acc, 'accuracy_sampled')}"
                         + (f", Δ mean C(y) {diff_cell(div, 'divergence_mean')}" if div is not None else "")
                         + f"; {c.model}")
    if comparisons or lines:
        parts += ["## Exploratory (not corrected for multiplicity; no verdicts)", "",
                  "Differences A − B with their 95% intervals, each on its own: nothing here is corrected for the "
                  "number of pairs and metrics shown, so an interval that excludes 0 is a lead for a declared "
                  "comparison, not a finding. Same problems, same sampling seeds: *paired by seed* takes the runs of "
                  "the seeds both rows have, problem by problem; *unpaired seeds* (no seed in common) adds the two "
                  "rows' seed variances; *these two runs* (a row of one seed) is over problems only and says whether "
                  "these trained models differ, not whether the methods do. Rows are compared only when they measure "
                  "the same thing (constraint and teacher), at A's budget d.", ""]
        if comparisons:
            parts += [exploratory_table(comparisons), ""]
        if lines:
            parts += ["### The hard budget against the best fixed penalty, at matched divergence (exploratory: the "
                      "penalty is selected on the same test problems it is judged on)", "", *lines, ""]
    families = family_rows(groups)
    if families:
        parts += ["## Per family: where the divergence is spent", "",
                  "The evaluation problems in the families the task tags them with (`task.family_field`). Means with "
                  "95% intervals over seeds and the family's problems; *start*: the student before training (mean over "
                  "seeds); *Δ acc over start*: sampled accuracy minus the start's on that family, the start's accuracy "
                  "(one number per seed: its evaluation keeps no per-problem records) subtracted unpaired, so the "
                  "start's sampling noise across seeds is in the interval, its noise across problems is not.", "",
                  family_table(families), "", "![per family: accuracy gain against divergence](families.png)", ""]
        plot_families(families, root / "families.png")
    plot_pareto(groups, intervals, root / "pareto.png")
    plot_curves(groups, root / "curves.png")
    parts += ["![accuracy against divergence](pareto.png)", "", "![training curves](curves.png)", "",
              "Runs (directory: command; each holds its resolved `config.yaml`):", ""]
    for g in groups:
        for r in g.runs:
            judged = latest_judgement(r.path)
            parts.append(f"- `{r.path.relative_to(root)}`: `{command_of(r.path)}`"
                         + (f" (judge win/loss/tie {judged})" if judged else ""))
    md = "\n".join(parts) + "\n"
    (root / "report.md").write_text(md)
    (root / "report.html").write_text(to_html(root, md))
    exploratory = ("Exploratory differences (not corrected for multiplicity; no verdicts):\n\n"
                   + exploratory_table(comparisons)) if comparisons else ""
    shown = [text, *several_shown, "\n".join(declared_section(declared)) if declared else "", exploratory,
             "\n".join(lines), family_table(families) if families else ""]
    return "\n\n".join(p.strip() for p in shown if p)


def to_html(root: Path, md: str) -> str:
    """The report as one HTML page: its tables as tables, its images inline, the rest as paragraphs."""
    body, rows = [], []

    def flush():
        if rows:
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip().replace("**", "") for c in line.strip("|").split("|")])
            continue
        flush()
        if line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            body.append(f"<p><img src='{html.escape(src)}' style='max-width:100%'></p>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    flush()
    return ("<!doctype html><meta charset='utf-8'><title>cdistill report</title><style>body{font-family:sans-serif;"
            "margin:2em}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
            "text-align:right}</style>" + "".join(body))


def report_main(argv: list[str]) -> None:
    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, as every other command's errors (argparse prints usage first)
            fail(f"{message}; usage: cdistill report <sweep or runs directory>")

    parser = Parser(prog="cdistill report", description=__doc__)
    parser.add_argument("dir", help="a sweep directory (or any directory holding run directories)")
    parser.add_argument("--verdicts", metavar="FILE", default=None,
                        help=f"the declared comparisons (default: {VERDICTS_FILE} in the directory, if there is one)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        fail(f"no such directory: {root}")
    source = Path(args.verdicts) if args.verdicts is not None else root / VERDICTS_FILE
    if args.verdicts is not None and not source.is_file():
        fail(f"no such verdicts file: {source}")
    try:
        declaration = read_declaration(source) if source.is_file() else None
    except DeclarationError as e:
        fail(str(e))
    runs = finished_runs(root)
    if not runs:
        fail(f"no finished run (summary.json) under {root}")
    groups = group_runs(runs)
    try:
        print(write_report(root, groups, declaration))
    except DeclarationError as e:
        fail(str(e))
    print(f"\n{len(runs)} runs in {len(groups)} groups; wrote {root / 'report.md'}, report.html, pareto.png and "
          "curves.png")
