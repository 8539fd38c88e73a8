#!/usr/bin/env python
"""Prove that a change leaves every number as it was: run a fixed set of tiny training runs on a git ref
(checked out in a temporary ``git worktree``) and on the working tree, then compare what they wrote.

    .venv/bin/python scripts/same_results.py HEAD~3            # the ref against the working tree
    .venv/bin/python scripts/same_results.py HEAD~3 --only cmdp,ddp --keep /tmp/same

Configurations: every method at its defaults, variants that reach the other code paths (token_kl, several
micro-batches and inner epochs, PID multiplier, full-vocabulary opd, gkd on references, a LoRA student, a run
resumed from its checkpoint), and two processes under DDP and under FSDP2. Compared byte for byte:
``metrics.jsonl`` and ``evals.jsonl`` (with the wall-clock fields removed), ``eval.json``,
``eval_samples.jsonl``, ``summary.json`` (less ``train_seconds``), ``config.yaml`` (each side's folder path replaced;
settings that the change adds, named by ``--new-settings``, left out of the working tree's),
the final student's files and, for two processes, each rank's weight digest. Both sides build their own embedded
models (tiny sizes) from scratch, so the model-building code is compared too. Exit 0 only when every
configuration matches; a table says which matched and, for the others, the first file that differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "tests"))
from helpers import TINY as TEST_SIZES  # noqa: E402  (the test suite's tiny models and batches)

# what the runs here change of the tests' sizes: three steps, one micro-batch, a mid-run evaluation and
# checkpoint, and a budget under the tiny student's typical C(y) (~2 nats) so that costs, violations and
# multipliers all move the weights
CHANGED = ["optim.steps=3", "optim.micro_batch=6", "scoring.micro_batch=6", "optim.lr=1e-2", "eval.every=2",
           "checkpoint.every=2", "constraint.threshold=1"]
TINY = [o for o in TEST_SIZES if o.split("=")[0] not in {c.split("=")[0] for c in CHANGED}] + CHANGED
METHODS = ["cmdp", "weakest_link", "saute", "lagrangian", "soft_penalty", "grpo", "opd", "gkd", "sft", "seqkd"]
CONFIGS: dict[str, list[str]] = {m: [f"method={m}"] for m in METHODS}
CONFIGS.update({
    # violations on most completions: the informative reward and the pathwise cost term are exercised
    # (method.informative=true: the paper's weight, spelt as every version of the setting reads it)
    "cmdp_token_kl": ["method=cmdp", "constraint.cost=token_kl", "constraint.threshold=0.5", "scoring.chunk=7",
                      "method.informative=true"],
    "cmdp_loose": ["method=cmdp", "constraint.threshold=5"],
    # several micro-batches and inner epochs: no shared student pass, gradient accumulation, ratio clipping
    "cmdp_accumulate": ["method=cmdp", "optim.micro_batch=3", "scoring.micro_batch=3", "optim.inner_epochs=2"],
    "lagrangian_pid": ["method=lagrangian", "method.controller=pid", "constraint.threshold=0.5"],
    "opd_full": ["method=opd", "method.estimator=full"],
    "gkd_reference": ["method=gkd", "method.off_policy=reference", "method.on_policy_fraction=0.5"],
    "soft_penalty_teacher_nll": ["method=soft_penalty", "constraint.cost=teacher_nll", "constraint.kind=mean"],
    # a LoRA student: adapter checkpoints, merged final save
    "lora": ["method=cmdp", "model.student.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"],
    # trained to the end, then run again from its step-2 checkpoint: what is compared is the resumed run
    "resume": ["method=lagrangian"],
})
# two processes (gloo on CPU): DDP, and FSDP2 with the student and the teacher sharded (tests/fsdp_on_cpu.py)
DDP = ["method=lagrangian", "method.lr=0.5", "method.ema_decay=0", "constraint.threshold=0.001"]
TWO_PROCESSES = ("ddp", "fsdp")
# wall-clock fields (and, with --changed-fields, fields the change alters on purpose): never compared
TIME_KEYS = {"time_generate", "time_score", "time_update", "time_step", "seconds", "eval/seconds", "train_seconds"}
EXACT = ["eval_samples.jsonl"]
WITHOUT_TIME = ["metrics.jsonl", "evals.jsonl", "eval.json", "summary.json"]
# each side runs in its own folder (its cache, its checkpoints): compared with that folder's path replaced
WITH_PATHS = ["config.yaml"]


def run(side: Path, code: Path, name: str, overrides: list[str], python: str,
        extra: list[str] | None = None) -> tuple[Path, str | None]:
    out = side / "runs" / name
    env = {**os.environ, "PYTHONPATH": str(code), "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    common = [*TINY, f"paths.cache={side / 'cache'}", f"hydra.run.dir={out}", *(extra or [])]
    if name in TWO_PROCESSES:
        torchrun = shutil.which("torchrun") or str(Path(python).parent / "torchrun")
        entry = ["-m", "cdistill.cli"] if name == "ddp" else [str(code / "tests" / "fsdp_on_cpu.py")]
        cmds = [[torchrun, "--nproc_per_node", "2", "--master_port", "29581", *entry, "train", *common, *DDP]]
    else:
        cmds = [[python, "-m", "cdistill.cli", "train", *common, *overrides]]
    if name == "resume":
        cmds.append([*cmds[0], f"resume={out / 'checkpoints' / 'step-000002'}", "overwrite=true"])
    for cmd in cmds:
        r = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode:
            return out, (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    return out, None


def without_time(rel: str, text: str) -> str:
    def strip(obj: dict) -> str:
        return json.dumps({k: v for k, v in obj.items() if k not in TIME_KEYS})

    if rel.endswith(".jsonl"):
        return "\n".join(strip(json.loads(x)) for x in text.splitlines() if x.strip())
    return strip(json.loads(text))


def without_settings(text: str, keys: list[str]) -> dict:
    """A recorded config.yaml with the dotted ``keys`` removed."""
    import yaml

    cfg = yaml.safe_load(text)
    for key in keys:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return cfg


def first_difference(a: Path, b: Path, new_settings: list[str] | None = None) -> str | None:
    """The first output that differs between two run directories (``b`` the working tree's, whose config may hold
    ``new_settings`` that ``a``'s does not, or spell them otherwise: left out of both), or None."""
    files = [*EXACT, *WITHOUT_TIME, *WITH_PATHS]
    files += sorted(str(p.relative_to(a)) for p in (a / "student").rglob("*") if p.is_file())
    files += sorted(str(p.relative_to(a)) for p in (a / "ranks").glob("*.json")) if (a / "ranks").is_dir() else []
    if (b / "student").is_dir():
        theirs = {str(p.relative_to(b)) for p in (b / "student").rglob("*") if p.is_file()}
        ours = {f for f in files if f.startswith("student/")}
        if theirs != ours:
            return f"student/ holds other files: {sorted(theirs ^ ours)}"
    for rel in files:
        fa, fb = a / rel, b / rel
        if fa.is_file() != fb.is_file():
            return f"{rel} exists on one side only"
        if not fa.is_file():
            continue
        if rel in WITHOUT_TIME:
            if without_time(rel, fa.read_text()) != without_time(rel, fb.read_text()):
                return rel
        elif rel in WITH_PATHS:
            ours, theirs = (f.read_text().replace(str(run.parents[1]), "<side>") for f, run in ((fa, a), (fb, b)))
            if new_settings:
                ours, theirs = without_settings(ours, new_settings), without_settings(theirs, new_settings)
            if ours != theirs:
                return rel
        elif fa.read_bytes() != fb.read_bytes():
            return rel
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref", help="git ref whose results are the record (e.g. HEAD, main, a commit)")
    p.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    p.add_argument("--keep", default="", help="write runs here and keep them (default: a temporary directory)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--new-settings", default="",
                   help="comma-separated dotted keys that the working tree adds to config.yaml (e.g. a new section): "
                        "left out of the comparison")
    p.add_argument("--changed-fields", default="",
                   help="comma-separated JSON fields that the change alters on purpose (e.g. an interval's bounds): "
                        "left out of the comparison of metrics, evaluations and summary, on both sides")
    p.add_argument("--work-overrides", default="",
                   help="space-separated overrides for the working tree's runs only: a setting the change adds whose "
                        "value reproduces the ref (e.g. task.validation_fraction=0)")
    args = p.parse_args()
    work_overrides = args.work_overrides.split()
    TIME_KEYS.update(k for k in args.changed_fields.split(",") if k)
    new_settings = [k for k in args.new_settings.split(",") if k]
    names = [*CONFIGS, *TWO_PROCESSES]
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            print(f"same_results: unknown configuration(s) {sorted(unknown)}; available: {', '.join(names)}",
                  file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only.split(",")]
    work = Path(args.keep or tempfile.mkdtemp(prefix="same-results-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "ref-tree"
    if tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    r = subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.ref], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode:
        print(f"same_results: cannot check out {args.ref}: {r.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    sha += " " + hashlib.sha256(json.dumps([TINY, CONFIGS, DDP]).encode()).hexdigest()[:12]
    rows, failed = [], 0
    try:
        # the ref's runs are kept (in --keep) and reused while the ref still names the same commit
        stamp = work / "ref" / "commit"
        reuse = stamp.is_file() and stamp.read_text() == sha
        for side in ("work",) if reuse else ("ref", "work"):
            shutil.rmtree(work / side, ignore_errors=True)
        (work / "ref").mkdir(parents=True, exist_ok=True)
        stamp.write_text(sha)
        for name in names:
            t = time.time()
            ref_out, ref_err = work / "ref" / "runs" / name, None
            if not (reuse and (ref_out / "summary.json").is_file()):
                ref_out, ref_err = run(work / "ref", tree, name, CONFIGS.get(name, []), args.python)
            work_out, work_err = run(work / "work", ROOT, name, CONFIGS.get(name, []), args.python, work_overrides)
            if ref_err or work_err:
                verdict = f"FAILED to run: {'ref: ' + ref_err if ref_err else 'work: ' + work_err}"
            else:
                diff = first_difference(ref_out, work_out, new_settings)
                verdict = "identical" if diff is None else f"DIFFERENT: {diff}"
            failed += verdict != "identical"
            rows.append((name, verdict, time.time() - t))
            print(f"{name:<26} {verdict}  ({time.time() - t:.0f} s)", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n| configuration | {args.ref} vs working tree |\n|---|---|")
    for name, verdict, _ in rows:
        print(f"| {name} | {verdict} |")
    print(f"\n{len(rows) - failed} of {len(rows)} configurations identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
