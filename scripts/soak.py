"""Soak: does a long run's resident memory stay flat? Trains the embedded default at tiny sizes for many steps
(a real `cdistill train` process) and samples its resident set size (RSS, from /proc) against the step it is at.

    .venv/bin/python scripts/soak.py                 # 3000 steps of cmdp
    .venv/bin/python scripts/soak.py --steps 500 --method lagrangian --out /tmp/soak

Prints a table: RSS at the first step, after warm-up (--warmup, default 10% of the steps) and at each quarter,
then the growth from warm-up to the end; exits 1 if it exceeds --max-growth-mib. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import TINY as TEST_SIZES  # noqa: E402  (the test suite's tiny models and batches)

# the tests' sizes, with more problems to draw from and no evaluation before training: thousands of steps in
# minutes on 2 cores (a later override of a key wins)
TINY = [*TEST_SIZES, "task.n_train=2000", "eval.at_start=false"]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def steps_done(metrics: Path) -> int:
    try:
        return metrics.read_text().count('"time_step"')
    except OSError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--method", default="cmdp")
    ap.add_argument("--warmup", type=int, default=None, help="steps before the baseline (default: 10%%)")
    ap.add_argument("--max-growth-mib", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--cache", type=Path, default=ROOT / "outputs" / "cache" / "soak")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cdistill-soak-")) / "run"
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    cmd = [sys.executable, "-m", "cdistill.cli", "train", *TINY, f"method={args.method}",
           f"optim.steps={args.steps}", f"paths.cache={args.cache}", f"hydra.run.dir={out}", "overwrite=true"]
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.stderr.log", "w")  # a pipe read only at the end could fill and stall the run
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    samples: list[tuple[int, float, float]] = []  # (step, seconds, RSS MiB)
    every, shown = max(1, args.steps // 20), 0
    while proc.poll() is None:
        step, rss = steps_done(out / "metrics.jsonl"), rss_mib(proc.pid)
        if rss is not None and step > 0:
            samples.append((step, time.time() - started, rss))
            if step // every > shown:  # progress about every 5% of the steps
                shown = step // every
                print(f"step {step:>6}  RSS {rss:8.1f} MiB", flush=True)
        time.sleep(args.interval)
    log.close()
    err = Path(log.name).read_text()
    if proc.returncode != 0 or not samples:
        print(f"soak: the run failed (exit {proc.returncode}): {err.strip().splitlines()[-1:] or ''}", file=sys.stderr)
        return 2

    def at(step: int) -> tuple[int, float, float]:
        return min(samples, key=lambda s: abs(s[0] - step))

    marks = [("first step", samples[0][0]), (f"after warm-up ({warmup})", warmup)]
    marks += [(f"{q}% of the steps", args.steps * q // 100) for q in (25, 50, 75)]
    marks.append(("end", samples[-1][0]))
    print(f"\nsoak: {args.method}, {args.steps} steps at tiny sizes, {time.time() - started:.0f} s, "
          f"{len(samples)} samples\n")
    print("| point | step | seconds | RSS MiB |\n|---|---|---|---|")
    for name, step in marks:
        s, t, r = at(step)
        print(f"| {name} | {s} | {t:.0f} | {r:.1f} |")
    base = at(warmup)[2]
    end = at(samples[-1][0])[2]  # when the last step was done (later samples are the final save and evaluation)
    after = [r for s, _, r in samples if s >= warmup]
    growth = end - base
    print(f"\nfrom warm-up to the end: {growth:+.1f} MiB ({100 * growth / base:+.1f}%); largest after warm-up "
          f"{max(after):.1f} MiB; metrics in {out}")
    summary = {"steps": args.steps, "warmup": warmup, "rss_first": samples[0][2], "rss_warmup": base,
               "rss_end": end, "rss_max_after_warmup": max(after), "growth_mib": growth}
    (out / "soak.json").write_text(json.dumps(summary, indent=2))
    if growth > args.max_growth_mib:
        print(f"soak: resident memory grew by {growth:.1f} MiB after warm-up (limit {args.max_growth_mib})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
