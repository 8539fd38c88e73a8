"""``cdistill report <dir>``: every finished run below a directory, as replicate groups with 95% intervals,
paired verdicts between methods, a Pareto plot with error bars and training curves with seed bands.

Reads only what runs wrote (``summary.json``, ``config.yaml``, ``eval_samples.jsonl``, ``metrics.jsonl``, the
Hydra ``.hydra/overrides.yaml``; ``evals.jsonl`` for the start student per family), so it works on any finished
sweep, and writes ``report.md``, ``report.html``, ``pareto.png`` and ``curves.png`` into that directory, and
``families.png`` with a per-family table when the runs evaluated families of problems (``task.family_field``).

The intervals are 95% intervals over seeds and problems (``cdistill.eval.stats.group_interval``: the variance
of the mean from the seed means and from the problem means, Student's t at Welch–Satterthwaite's degrees of
freedom); one run's interval comes from its evaluation problems alone.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cdistill.eval.plots import plot_curves, plot_families, plot_pareto
from cdistill.eval.replicates import Group, finished_runs, group_runs
from cdistill.eval.stats import Difference, Interval, group_interval, paired_difference, verdict

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
# what the verdicts compare: (metric, higher is better, name)
COMPARED = [("accuracy_sampled", True, "acc (sampled)"), ("satisfaction_rate", True, "satisfied at end"),
            ("never_exceeded_rate", True, "never exceeded"), ("divergence_mean", False, "mean C(y)")]
RESAMPLES = 2000  # random sign patterns of the paired test (beyond 16 problems)


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
            out[(i, metric)] = _safely(group_interval, m, what=f"{g.name}: {metric}") if m is not None else None
    return out


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
    seeds: list  # the seeds both have (paired by seed too); empty: seeds averaged first
    diffs: dict  # metric -> Difference


def pairs(groups: list[Group]) -> list[tuple[Group, Group, float]]:
    """Which groups to compare, and at which budget, among groups that measure the same cost the same way: any
    two at the same d; and a cmdp group against every group whose training never reads d (soft_penalty, grpo,
    ...: ``trains_on_budget`` false in its summary) at cmdp's d, the other's constraint read again there. Two
    groups trained on different budgets are not compared: their difference is the budget, not the method."""
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if a.constraint != b.constraint:
                continue
            first, second = (b, a) if b.method == "cmdp" and a.method != "cmdp" else (a, b)
            if a.threshold == b.threshold:
                out.append((first, second, first.threshold))
            elif first.method == "cmdp" and not second.first.get("trains_on_budget", True):
                out.append((first, second, first.threshold))
    return out


def compare(a: Group, b: Group, threshold: float) -> Comparison | None:
    """Problem-by-problem differences a − b, paired by seed where both have it; None when the two did not
    evaluate the same problems (or kept no per-problem records)."""
    if a.questions() is None or a.questions() != b.questions():
        return None
    seeds = [s for s in a.seeds if s is not None and s in b.seeds]
    diffs = {}
    for metric, _, _ in COMPARED:
        ma = a.matrix(metric, None if threshold == a.threshold else threshold, seeds or None)
        mb = b.matrix(metric, None if threshold == b.threshold else threshold, seeds or None)
        if ma is None or mb is None:  # records written before the metric existed
            continue
        if not seeds:  # unpaired seeds: compare the seed-averaged problems
            ma, mb = ma.mean(0, keepdims=True), mb.mean(0, keepdims=True)
        diff = _safely(paired_difference, ma, mb, what=f"{a.name} vs {b.name}: {metric}")
        if diff is not None:
            diffs[metric] = diff
    return Comparison(a, b, threshold, seeds, diffs) if "accuracy_sampled" in diffs else None


def diff_cell(d: Difference, metric: str, higher: bool) -> str:
    spec = "{:+.2f}" if metric == "divergence_mean" else "{:+.3f}"
    floor = 1 / (RESAMPLES + 1)  # the smallest Monte Carlo p-value: say "below", not a number
    p = f"p<{floor + 1e-9:.1g}" if not d.p_exact and d.p_value <= floor else f"p={d.p_value:.2g}"
    return (f"{spec.format(d.mean)} [{spec.format(d.low)}, {spec.format(d.high)}] {p}: "
            f"**{verdict(d, higher, 'A', 'B')}**")


def verdict_table(comparisons: list[Comparison]) -> str:
    cols = ["A", "B", "at d", "seeds paired", *(f"Δ {name} (A − B)" for _, _, name in COMPARED)]
    rows = []
    for c in comparisons:
        rows.append([c.a.name, c.b.name, f"{c.threshold:g}", ",".join(map(str, c.seeds)) or "no (seed means)",
                     *(diff_cell(c.diffs[m], m, hi) if m in c.diffs else "-" for m, hi, _ in COMPARED)])
    return markdown(cols, rows)


def matched(groups: list[Group], intervals: dict) -> list[tuple[Group, Group, str]]:
    """The hard budget against the best fixed penalty at matched divergence: for each cmdp group, the
    soft_penalty group with the highest sampled accuracy among those whose mean C(y) is not above cmdp's
    interval for it; without one, the least divergent soft_penalty group (said so)."""
    out = []
    index = {id(g): i for i, g in enumerate(groups)}

    def value(g, metric):
        iv = intervals.get((index[id(g)], metric))
        return iv.mean if iv else g.mean(metric)

    for a in (g for g in groups if g.method == "cmdp"):
        fixed = [g for g in groups if g.method == "soft_penalty" and g.constraint == a.constraint]
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
        return None if m is None or m.size == 0 else _safely(group_interval, m, what=f"{g.name} {family}: {metric}")

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


def write_report(root: Path, groups: list[Group]) -> str:
    intervals = intervals_of(groups)
    text = table(groups, intervals)
    comparisons = [c for a, b, d in pairs(groups) if (c := compare(a, b, d)) is not None]
    parts = [f"# cdistill report: {root}", "", "Means with 95% intervals over seeds and evaluation problems "
             "(the variance of the mean from seed means and from problem means, Student's t at Welch–Satterthwaite's "
             "degrees of freedom; one run: over its problems). Runs that differ only in "
             "`seed` are one row. *satisfied at end*: C(y) <= d; *never exceeded*: no prefix's C_t above d (the "
             "Sauté reading, under which cmdp forfeits the reward); *no answer*: completions from which no final "
             "answer could be extracted.", "", text, ""]
    if comparisons:
        parts += ["## Paired verdicts", "",
                  "Same problems, same sampling seeds: differences A − B problem by problem, paired by seed, with "
                  "their 95% interval (over seeds and problems, as above) and a paired sign-flip p-value (over "
                  "problems only, seeds averaged). "
                  "The verdict reads the interval: *A better* / *B better* when it excludes 0, otherwise *no "
                  "detectable difference*. Both are read at A's budget d.", "", verdict_table(comparisons), ""]
    best = matched(groups, intervals)
    by_pair = {(id(c.a), id(c.b)): c for c in comparisons}
    lines = []
    for a, b, why in best:
        c = by_pair.get((id(a), id(b)))
        if c is not None:
            acc = c.diffs["accuracy_sampled"]
            lines.append(f"- **{a.name}** vs **{b.name}** ({why}): Δ acc {acc.mean:+.3f} [{acc.low:+.3f}, "
                         f"{acc.high:+.3f}], Δ mean C(y) {c.diffs['divergence_mean'].mean:+.2f}: "
                         f"**{verdict(acc, True, a.name, b.name)}** on accuracy")
    if lines:
        parts += ["## The hard budget against the best fixed penalty, at matched divergence", "", *lines, ""]
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
    return "\n\n".join(p for p in (text, verdict_table(comparisons) if comparisons else "", "\n".join(lines),
                                   family_table(families) if families else "") if p)


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
    from cdistill.cli import fail

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, as every other command's errors (argparse prints usage first)
            fail(f"{message}; usage: cdistill report <sweep or runs directory>")

    parser = Parser(prog="cdistill report", description=__doc__)
    parser.add_argument("dir", help="a sweep directory (or any directory holding run directories)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        fail(f"no such directory: {root}")
    runs = finished_runs(root)
    if not runs:
        fail(f"no finished run (summary.json) under {root}")
    groups = group_runs(runs)
    print(write_report(root, groups))
    print(f"\n{len(runs)} runs in {len(groups)} groups; wrote {root / 'report.md'}, report.html, pareto.png and "
          "curves.png")
