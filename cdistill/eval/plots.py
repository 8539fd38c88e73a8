"""The report's figures: accuracy against divergence with intervals on both axes, training curves of the
student's own samples, smoothed, with a band across seeds, and, for runs with several constraints, the divergence
each spends per family."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from cdistill.eval.replicates import Group, label, metric_rows, teacher_names
from cdistill.eval.stats import Interval, band, smooth

MARKERS = "osD^vP*X"
# one line style per constraint in the multiplier panel (the first constraint's solid, as a single λ is drawn)
STYLES = ("-", "--", ":", "-.")
CURVES = [("reward", "task reward (student's samples)"), ("divergence_mean", "mean C(y)"),
          ("satisfaction_rate", "satisfied at the end"), ("lambda", "λ (lagrangian)")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_axis(summaries: list[dict]) -> tuple[str, str]:
    """The divergence to plot: C(y) when every run measures it the same way; otherwise (a weakest_link run
    beside logratio runs, say) the sampled KL per token, which every run reports alike."""
    if len({(s.get("cost"), s.get("kind")) for s in summaries}) <= 1:
        return "divergence_mean", "mean divergence C(y) from the teacher (held-out samples)"
    return "sampled_kl_per_token", "sampled KL per token to the teacher (runs differ in their constraint)"


def pareto_series(groups: list[Group]) -> dict[str, list[int]]:
    """``{series label: group indices}``: one series per method and teacher. Runs against different teachers (a
    default run and a ``+exp=flawed_teacher`` one) measure C(y) against different distributions, so they are never
    joined into one curve; the teacher is named only when the groups have more than one."""
    teachers = teacher_names(groups)
    series = defaultdict(list)
    for i, g in enumerate(groups):
        series[g.method + (f" (teacher {teachers[id(g)]})" if teachers[id(g)] else "")].append(i)
    return dict(sorted(series.items()))


def point_label(g: Group, groups: list[Group]) -> str:
    """A point's annotation: its budget d when its training reads one (a method that ignores d is not labelled with
    the d its C(y) happens to be read at), and the settings that set its group apart but the teacher's, which the
    series' name gives."""
    rest = label(g, groups, leave_out=tuple(k for k, _ in g.teacher))
    return " ".join(p for p in (f"d={g.threshold:g}" if g.trains_on_budget else "", rest) if p)


def plot_pareto(groups: list[Group], intervals: dict, out: Path) -> None:
    """Accuracy against mean divergence: one marked curve per method and teacher (``pareto_series``), a point per
    group with its 95% interval on both axes, labelled by what sets the group apart (its budget, its penalty).

    ``intervals[(group index, metric)]`` holds each group's Interval (None without per-problem records: the
    point is drawn without bars). Coinciding points get one label, and each series its own marker so that a hidden
    point stays visible.
    """
    plt = _pyplot()
    x_key, x_label = pareto_axis([g.first for g in groups])
    by_method = pareto_series(groups)
    if len({g.teacher for g in groups}) > 1 and x_key == "divergence_mean":
        x_label = "mean C(y) from each series' own teacher (held-out samples)"
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    for m, (method, idx) in enumerate(by_method.items()):
        pts = []
        for i in idx:
            x, y = intervals.get((i, x_key)), intervals.get((i, "accuracy_sampled"))
            xm = x.mean if x else groups[i].mean(x_key)
            ym = y.mean if y else groups[i].mean("accuracy_sampled")
            if xm is None or ym is None:
                continue
            pts.append((xm, ym, x, y, groups[i]))
        pts.sort(key=lambda p: p[0])
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xerr = _errors(pts, 2)
        yerr = _errors(pts, 3)
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker=MARKERS[m % 8], markersize=8 - m % 4, capsize=3, lw=1,
                    elinewidth=0.8, fillstyle="none" if m % 2 else "full", label=method, alpha=0.85)
        labels = defaultdict(list)
        for xm, ym, _, _, g in pts:
            if point_label(g, groups):
                labels[(round(xm, 6), round(ym, 6))].append(point_label(g, groups))
        for (x, y), names in labels.items():
            ax.annotate("; ".join(names), (x, y), fontsize=6.5, textcoords="offset points", xytext=(5, 4 - 9 * (m % 2)))
    starts = [g.mean("start_accuracy_sampled") for g in groups if g.mean("start_accuracy_sampled") is not None]
    if starts:
        ax.axhline(starts[0], color="grey", ls=":", lw=1, label="student before training")
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (sampled)")
    ax.set_title("accuracy against divergence (means, 95% intervals over seeds and problems)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _errors(pts, k: int):
    """Asymmetric error bars (below, above) from the points' intervals; zero where a point has none."""
    lows = [p[k].mean - p[k].low if isinstance(p[k], Interval) else 0.0 for p in pts]
    highs = [p[k].high - p[k].mean if isinstance(p[k], Interval) else 0.0 for p in pts]
    return np.array([lows, highs])


def plot_curves(groups: list[Group], out: Path, window: int = 10) -> None:
    """Training curves, one colour per group: the mean over its seeds of each run's trailing moving average
    (``window`` steps), with the band between the lowest and highest seed."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    handles = {}
    # a lagrangian with several constraints learns a multiplier per constraint (``lambda@name``; ``lambda`` is the
    # first one's again): each is drawn, told apart by its line style
    names = list(dict.fromkeys(n for g in groups for n in g.budgets))
    for (key, title), ax in zip(CURVES, axes.flat, strict=True):
        drawn, styled = False, {}
        for i, g in enumerate(groups):
            keys = [(f"{key}@{n}", n) for n in g.budgets] if key == "lambda" and g.budgets else []
            if keys and not any(len(metric_rows(r.path, k)[0]) for k, _ in keys for r in g.runs):
                keys = []  # a run that logged its first multiplier alone: drawn as a single λ
            for series, budget in keys or [(key, None)]:
                curves = [metric_rows(r.path, series) for r in g.runs]
                curves = [(s, smooth(v, window)) for s, v in curves if len(v)]
                if not curves:
                    continue
                # the steps every seed logged (gkd's on-policy steps differ from seed to seed; a run that stopped
                # early ends the band)
                steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
                if not steps:
                    continue
                mean, low, high = band([v[np.isin(s, steps)] for s, v in curves])
                color = cmap(i % cmap.N)
                name = f"{g.name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
                style = STYLES[names.index(budget) % len(STYLES)] if budget is not None else "-"
                (line,) = ax.plot(steps, mean, lw=1.2, color=color, label=name, ls=style)
                if len(curves) > 1:
                    ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
                handles.setdefault(name, line)
                if budget is not None:
                    styled.setdefault(budget, style)
                drawn = True
        if styled:
            ax.legend([plt.Line2D([], [], color="black", ls=st, lw=1.2) for st in styled.values()],
                      [f"λ@{n}" for n in styled], fontsize=7, loc="best")
        if not drawn:
            ax.text(0.5, 0.5, "no run logs this on its own samples", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        elif key == "divergence_mean":  # the budgets the constrained runs train against: does C(y) reach them?
            for d in sorted({g.threshold for g in groups if g.trains_on_budget}):
                ax.axhline(d, color="black", linestyle="--", linewidth=0.8)
                ax.annotate(f"d = {d:g}", (0.99, d), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                            fontsize=7)
        # with several constraints these two are the first constraint's C(y) and the joint rate (what the runs log
        # under these keys)
        extra = {"divergence_mean": f" ({names[0]!r})", "satisfaction_rate": " (every budget)"} if names else {}
        ax.set_title(title + extra.get(key, ""), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(f"training curves: mean of {window}-step moving averages over seeds, band = seeds' range",
                 fontsize=9)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, max(1, len(handles))),
               fontsize=7)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(handles) // 3), 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_families(rows, out: Path) -> None:
    """Where each group spends its divergence: one panel per family of problems, each group's accuracy gained over
    the start student against its mean C(y) there, with 95% intervals on both axes; one colour and marker per
    group, the same in every panel, so a group's points can be followed from family to family.

    ``rows`` are ``cdistill.eval.report.FamilyRow``s (a group, a family, Intervals for ``gain`` and
    ``divergence``); a row without a gain (no start evaluation) is left out."""
    plt = _pyplot()
    groups = list(dict.fromkeys(id(r.group) for r in rows))
    families = list(dict.fromkeys(r.family for r in rows))
    cols = min(len(families), 3)
    nrows = -(-len(families) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.9 * nrows + 0.9), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    handles = {}
    for fi, family in enumerate(families):
        ax = axes[fi // cols][fi % cols]
        shown = [r for r in rows if r.family == family and r.gain is not None and r.divergence is not None]
        for r in shown:
            gi = groups.index(id(r.group))
            h = ax.errorbar([r.divergence.mean], [r.gain.mean], xerr=_errors([(0, 0, r.divergence, r.gain)], 2),
                            yerr=_errors([(0, 0, r.divergence, r.gain)], 3), color=cmap(gi % cmap.N),
                            marker=MARKERS[gi % len(MARKERS)], capsize=3, lw=0, elinewidth=0.8, markersize=6,
                            alpha=0.85)
            handles.setdefault(r.group.name, h)
        of_family = [r for r in rows if r.family == family]
        known = [r.teacher_accuracy for r in of_family if r.teacher_accuracy is not None]
        teacher = f"; teacher acc {known[0]:.2f}" if known else ""
        ax.set_title(f"family {family!r} ({max(r.n_problems for r in of_family)} problems{teacher})", fontsize=9)
        ax.axhline(0.0, color="grey", ls=":", lw=1)
        ax.set_xlabel("mean C(y) on the family", fontsize=8)
        ax.grid(alpha=0.3)
        if not shown:
            ax.text(0.5, 0.5, "no start evaluation per family", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
    for row in axes:
        row[0].set_ylabel("accuracy gained over the start (sampled)", fontsize=8)
    _finish_panels(plt, fig, axes, len(families), handles, out,
                   "per family: accuracy gained against divergence spent (95% intervals over seeds and problems)")


def _finish_panels(plt, fig, axes, used: int, handles: dict, out: Path, title: str) -> None:
    """Hide the panels past ``used``, title the figure, put one legend under it and save it."""
    for ax in axes.flat[used:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * (-(-len(handles) // 4)), 1, 0.95))
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_allocation(rows, names: list[str], out: Path) -> None:
    """How each group divides its divergence among families of problems, one panel per constraint: grouped bars of
    the mean C(y) per family, one colour per group, with 95% intervals as whiskers where the runs kept per-problem
    records, and each budget of that constraint among the groups as a dashed line.

    ``rows`` are ``cdistill.eval.report.AllocationRow``s: ``divergence[name]`` an ``(Interval or None, mean or None)``
    pair, ``thresholds[name]`` the group's budget (None where the group has no such constraint)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(id(r.group) for r in rows))
    group_names = {id(r.group): r.group.name for r in rows}
    families = list(dict.fromkeys(r.family for r in rows))
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    cols = min(len(names), 3)
    nrows = -(-len(names) // cols)
    width = 0.8 / max(1, len(groups))
    fig, axes = plt.subplots(nrows, cols, figsize=(max(4.6, 1.2 * len(families) * max(1, len(groups)) ** 0.5) * cols,
                                                   3.9 * nrows + 0.9), squeeze=False)
    handles = {}
    for ni, name in enumerate(names):
        ax = axes[ni // cols][ni % cols]
        for r in rows:
            interval, mean = r.divergence[name]
            mean = interval.mean if interval is not None else mean
            if mean is None:
                continue
            gi = groups.index(id(r.group))
            x = families.index(r.family) - 0.4 + width * (gi + 0.5)
            err = _errors([(0, 0, interval)], 2) if interval is not None else None
            h = ax.bar([x], [mean], width=width * 0.9, yerr=err, capsize=2, color=cmap(gi % cmap.N),
                       error_kw={"elinewidth": 0.8})
            handles.setdefault(group_names[id(r.group)], h)
        for d in sorted({t for r in rows if isinstance(t := r.thresholds.get(name), int | float)}):
            ax.axhline(d, color="black", ls="--", lw=0.8)
            ax.annotate(f"d = {d:g}", (0.99, d), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(families)), families, fontsize=8)
        ax.set_xlabel("family", fontsize=8)
        ax.set_ylabel(f"mean C(y) of {name!r}", fontsize=8)
        ax.set_title(f"constraint {name!r}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    _finish_panels(plt, fig, axes, len(names), handles, out,
                   "divergence allocation: mean C(y) per family and constraint (95% intervals over seeds and problems)")
