"""``cdistill report <dir>``: one table over every finished run below a directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = [
    ("method", "method", "{}"), ("d", "threshold", "{:g}"), ("teacher acc", "teacher_accuracy_sampled", "{:.3f}"),
    ("start acc", "start_accuracy_sampled", "{:.3f}"), ("start satisfied", "start_satisfaction_rate", "{:.3f}"),
    ("acc (sampled)", "accuracy_sampled", "{:.3f}"), ("acc (greedy)", "accuracy_greedy", "{:.3f}"),
    ("div mean", "divergence_mean", "{:.2f}"), ("div p90", "divergence_p90", "{:.2f}"),
    ("satisfied", "satisfaction_rate", "{:.3f}"), ("success", "success_rate", "{:.3f}"),
    ("steps", "steps", "{}"), ("seconds", "train_seconds", "{:.0f}"),
]


def collect(root: Path) -> list[tuple[Path, dict]]:
    runs = []
    for path in sorted(root.rglob("summary.json")):
        try:
            runs.append((path.parent, json.loads(path.read_text())))
        except json.JSONDecodeError:
            print(f"cdistill report: skipping unreadable {path}", file=sys.stderr)
    return runs


def fmt(summary: dict, key: str, spec: str) -> str:
    v = summary.get(key)
    return "-" if v is None else spec.format(v)


def table(runs: list[tuple[Path, dict]]) -> str:
    """A Markdown table, one row per run, ordered by method then threshold."""
    rows = sorted(runs, key=lambda r: (r[1].get("method", ""), r[1].get("threshold", 0)))
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt(s, k, f) for _, k, f in COLUMNS) + " |" for _, s in rows]
    return "\n".join([head, sep, *body])


def report_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="cdistill report", description=__doc__)
    parser.add_argument("dir", help="a sweep directory (or any directory holding run directories)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        print(f"cdistill: error: no such directory: {root}", file=sys.stderr)
        sys.exit(2)
    runs = collect(root)
    if not runs:
        print(f"cdistill: error: no finished run (summary.json) under {root}", file=sys.stderr)
        sys.exit(2)
    text = table(runs)
    (root / "report.md").write_text(f"# cdistill report: {root}\n\n{text}\n\nRuns:\n\n" +
                                     "\n".join(f"- `{p}`" for p, _ in runs) + "\n")
    print(text)
    print(f"\nwrote {root / 'report.md'}")
