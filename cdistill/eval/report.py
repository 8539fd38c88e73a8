"""``cdistill report <dir>``: one table, a Pareto plot and training curves over every run below a directory.

Reads only what runs wrote (``summary.json``, ``metrics.jsonl``, the Hydra ``.hydra/overrides.yaml``), so it
works on any finished sweep, and writes ``report.md``, ``report.html``, ``pareto.png`` and ``curves.png``
into that directory.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from cdistill.jsonl import read_jsonl

COLUMNS = [
    ("method", "method", "{}"), ("d", "threshold", "{:g}"), ("teacher acc", "teacher_accuracy_sampled", "{:.3f}"),
    ("start acc", "start_accuracy_sampled", "{:.3f}"), ("start satisfied", "start_satisfaction_rate", "{:.3f}"),
    ("acc (sampled)", "accuracy_sampled", "{:.3f}"), ("acc (greedy)", "accuracy_greedy", "{:.3f}"),
    ("div mean", "divergence_mean", "{:.2f}"), ("div p90", "divergence_p90", "{:.2f}"),
    ("satisfied", "satisfaction_rate", "{:.3f}"), ("success", "success_rate", "{:.3f}"),
    ("judge win/loss/tie", "judge", "{}"), ("steps", "steps", "{}"), ("seconds", "train_seconds", "{:.0f}"),
]
CURVES = [("reward", "task reward (samples)"), ("divergence_mean", "mean C(y)"),
          ("satisfaction_rate", "satisfaction rate"), ("lambda", "λ (lagrangian)")]


def latest_judgement(run_dir: Path) -> str | None:
    """'win/loss/tie' of the run's newest ``cdistill judge`` against its reference, if it was judged."""
    found = sorted((run_dir / "judge").glob("*/judge.json"))
    if not found:
        return None
    j = json.loads(found[-1].read_text())
    text = f"{j['win_rate']:.2f}/{j['loss_rate']:.2f}/{j['tie_rate']:.2f} vs {Path(j['run_b']).name}"
    return text + (f" ({j['failed_rate']:.2f} failed)" if j.get("failed_rate") else "")


def finished_runs(root: Path) -> list[tuple[Path, dict]]:
    """(run directory, summary) of every finished run under ``root``, by method and threshold."""
    runs = []
    for path in sorted(root.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"cdistill report: skipping unreadable {path}", file=sys.stderr)
            continue
        summary["judge"] = latest_judgement(path.parent)
        runs.append((path.parent, summary))
    return sorted(runs, key=lambda r: (r[1].get("method", ""), r[1].get("threshold", 0)))


def command_of(run_dir: Path) -> str:
    """The command line that made a run, from the overrides Hydra recorded."""
    p = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(p.read_text()) if p.is_file() else None
    return "cdistill train " + " ".join(overrides or []) if overrides is not None else "(not recorded)"


def fmt(summary: dict, key: str, spec: str) -> str:
    v = summary.get(key)
    return "-" if v is None else spec.format(v)


def table(runs: list[tuple[Path, dict]]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt(s, k, f) for _, k, f in COLUMNS) + " |" for _, s in runs]
    return "\n".join([head, sep, *body])


MARKERS = "osD^vP*X"


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


def plot_pareto(runs, out: Path) -> None:
    """Accuracy against mean divergence: one marked curve per method, each point labelled by its budget.

    Methods whose training ignores the budget (grpo, soft_penalty) give the same point at every d: such
    coinciding points get one label listing their thresholds, and each method its own marker, so that a
    point hidden under another method's stays visible.
    """
    plt = _pyplot()
    x_key, x_label = pareto_axis([s for _, s in runs])
    by_method = defaultdict(list)
    for _, s in runs:
        by_method[s["method"]].append(s)
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    for i, (method, ss) in enumerate(sorted(by_method.items())):
        ss = sorted(ss, key=lambda s: (s[x_key], s["threshold"]))
        ax.plot([s[x_key] for s in ss], [s["accuracy_sampled"] for s in ss], marker=MARKERS[i % 8],
                markersize=9 - i % 5, fillstyle="none" if i % 2 else "full", label=method, alpha=0.85)
        points = defaultdict(list)
        for s in ss:
            points[(round(s[x_key], 6), round(s["accuracy_sampled"], 6))].append(f"{s['threshold']:g}")
        for (x, y), ds in points.items():
            ax.annotate("d=" + ",".join(ds), (x, y), fontsize=7, textcoords="offset points",
                        xytext=(5, 4 - 9 * (i % 2)))
    starts = [s for _, s in runs if s.get("start_accuracy_sampled") is not None]
    if starts:
        ax.axhline(starts[0]["start_accuracy_sampled"], color="grey", ls=":", lw=1, label="student before RL")
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (sampled)")
    ax.set_title("accuracy against divergence, one curve per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_curves(runs, out: Path) -> None:
    """Training curves, one colour per run across all panels."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    handles = {}
    for (key, title), ax in zip(CURVES, axes.flat, strict=True):
        drawn = False
        for i, (run_dir, s) in enumerate(runs):
            metrics = run_dir / "metrics.jsonl"
            rows = [r for r in (read_jsonl(metrics) if metrics.is_file() else [])
                    if r.get(key) is not None and "reward" in r]
            if rows:
                drawn = True
                label = f"{s['method']} d={s['threshold']:g}"
                (line,) = ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1, color=cmap(i % 20),
                                  label=label)
                handles.setdefault(label, line)
        if not drawn:
            ax.text(0.5, 0.5, "no run logs this", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, max(1, len(handles))),
               fontsize=7)
    fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(handles) // 4), 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_report(root: Path, runs) -> str:
    text = table(runs)
    plot_pareto(runs, root / "pareto.png")
    plot_curves(runs, root / "curves.png")
    runs_md = "\n".join(f"- `{p.relative_to(root)}`: `{command_of(p)}`" for p, _ in runs)
    (root / "report.md").write_text(
        f"# cdistill report: {root}\n\n{text}\n\n![accuracy against divergence](pareto.png)\n\n"
        f"![training curves](curves.png)\n\nRuns (directory: command; each holds its resolved `config.yaml`):\n\n"
        f"{runs_md}\n")
    cells = lambda row: "".join(f"<td>{html.escape(c.strip())}</td>" for c in row.strip("|").split("|"))  # noqa: E731
    lines = text.splitlines()
    rows_html = "".join(f"<tr>{cells(r)}</tr>" for r in lines[2:])
    head_html = "".join(f"<th>{html.escape(c.strip())}</th>" for c in lines[0].strip("|").split("|"))
    runs_html = "".join(f"<li><code>{html.escape(str(p.relative_to(root)))}</code>: "
                        f"<code>{html.escape(command_of(p))}</code></li>" for p, _ in runs)
    (root / "report.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>cdistill report</title>"
        f"<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
        f"td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style>"
        f"<h1>cdistill report</h1><p>{html.escape(str(root))}</p><table><tr>{head_html}</tr>{rows_html}</table>"
        f"<p><img src='pareto.png'></p><p><img src='curves.png' width='900'></p><ul>{runs_html}</ul>")
    return text


def report_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="cdistill report", description=__doc__)
    parser.add_argument("dir", help="a sweep directory (or any directory holding run directories)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        print(f"cdistill: error: no such directory: {root}", file=sys.stderr)
        sys.exit(2)
    runs = finished_runs(root)
    if not runs:
        print(f"cdistill: error: no finished run (summary.json) under {root}", file=sys.stderr)
        sys.exit(2)
    print(write_report(root, runs))
    print(f"\nwrote {root / 'report.md'}, report.html, pareto.png and curves.png")
