"""Finished runs read back for ``cdistill report``: grouped into replicates, and their evaluations as per-problem
matrices that the intervals and paired comparisons work on.

Runs whose resolved configurations differ only in ``seed`` (and in keys that change resources, not the
experiment: logging, paths, devices, micro-batch sizes) are replicates of one group. Every run evaluated the same
held-out problems, and runs with the same seed sampled them with the same seed, so a group's metric is a
``[seeds, problems]`` matrix and two groups compare problem by problem.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from cdistill.jsonl import read_jsonl
from cdistill.tasks.base import family_order

# keys that do not change what a run measures: runs that differ only here (and in seed) are replicates
RESOURCE_KEYS = ("seed", "logging", "paths", "resume", "overwrite", "checkpoint", "debug", "save_student", "device",
                 "eval.batch_size", "eval.every", "scoring.micro_batch", "scoring.chunk", "optim.micro_batch", "hydra",
                 "task.family_field")
# keys a row shows in their own columns, not in its settings label
SHOWN = ("method.name", "constraint.threshold", "constraint.cost", "constraint.kind")


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree, sort_keys=True)}
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out or {prefix: "{}"}


def without_resources(flat: dict) -> dict:
    return {k.rstrip("."): v for k, v in flat.items()
            if not any(k == r + "." or k.startswith(r + ".") for r in RESOURCE_KEYS)}


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict  # flattened resolved config, resource keys left out; {} when the run recorded none
    seed: int | None

    @cached_property
    def samples(self) -> list[dict] | None:
        """The final evaluation's per-problem records (``eval_samples.jsonl``), or None without them."""
        p = self.path / "eval_samples.jsonl"
        return read_jsonl(p, skip_malformed=True) if p.is_file() else None

    @cached_property
    def start(self) -> dict | None:
        """The evaluation of the student before training (``evals.jsonl``, step 0), or None without one."""
        p = self.path / "evals.jsonl"
        rows = read_jsonl(p, skip_malformed=True) if p.is_file() else []
        return next((r for r in rows if r.get("step") == 0), None)


def load_run(path: Path) -> Run | None:
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (json.JSONDecodeError, OSError):
        print(f"cdistill report: skipping unreadable {path / 'summary.json'}", file=sys.stderr)
        return None
    config, seed = {}, None
    if (path / "config.yaml").is_file():
        tree = yaml.safe_load((path / "config.yaml").read_text()) or {}
        seed = tree.get("seed")
        config = without_resources(flatten(tree))
    return Run(path, summary, config, seed)


@dataclass
class Group:
    """Replicates of one configuration: the runs, and the settings that set the group apart from the others."""

    runs: list[Run]
    label: str = ""

    @property
    def first(self) -> dict:
        return self.runs[0].summary

    @property
    def method(self) -> str:
        return self.first.get("method", "?")

    @property
    def threshold(self) -> float:
        return self.first.get("threshold", float("nan"))

    @property
    def constraint(self) -> tuple:
        return self.first.get("cost"), self.first.get("kind")

    @property
    def constraint_text(self) -> str:
        cost, kind = self.constraint
        return f"{kind} of {cost} <= {self.threshold:g}" if cost else f"d = {self.threshold:g}"

    @property
    def name(self) -> str:
        return f"{self.method} d={self.threshold:g}" + (f" {self.label}" if self.label else "")

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    def mean(self, key: str) -> float | None:
        vals = [r.summary.get(key) for r in self.runs]
        vals = [v for v in vals if isinstance(v, int | float)]
        return sum(vals) / len(vals) if vals else None

    def matrix(self, metric: str, threshold: float | None = None, seeds: list | None = None,
               family: str | None = None) -> np.ndarray | None:
        """``[seeds, problems]`` per-problem values of ``metric`` (at another budget ``threshold`` when given),
        for ``seeds`` (default all), over the problems of ``family`` (default all); None when a run kept no
        per-problem records, they lack the metric, or the runs did not evaluate the same problems."""
        runs = self.runs_of(seeds)
        if not runs or any(r.samples is None for r in runs):
            return None
        if len({tuple(p["question"] for p in r.samples) for r in runs}) != 1:
            return None
        if family is not None and len({tuple(p.get("family") for p in r.samples) for r in runs}) != 1:
            return None  # runs that tag the problems differently, or not at all (task.family_field is a resource key)
        try:
            return np.array([[per_problem(p, metric, threshold) for p in r.samples
                              if family is None or p["family"] == family] for r in runs], dtype=np.float64)
        except KeyError:  # records written before the metric existed
            return None

    def runs_of(self, seeds: list | None = None) -> list[Run]:
        """The group's runs of ``seeds`` (default all), in that order."""
        runs = [r for r in self.runs if seeds is None or r.seed in seeds]
        return runs if seeds is None else sorted(runs, key=lambda r: seeds.index(r.seed))

    def families(self) -> list[str]:
        """The families its problems were evaluated in (``task.family_field``), in the order evaluation reports
        them; empty when the runs kept no records, evaluated no families, or tag the problems differently (one
        line on stderr says so: the runs are replicates, their families must be too)."""
        tags = {tuple(p.get("family") for p in (r.samples or [])) for r in self.runs}
        if len(tags) > 1:
            if any(t and any(f is not None for f in t) for t in tags):
                print(f"cdistill report: {self.name}: its runs tag their problems with different families (or some "
                      "with none); no per-family rows for it", file=sys.stderr)
            return []
        return sorted({f for f in next(iter(tags), ()) if f is not None}, key=family_order)

    def questions(self) -> tuple | None:
        s = self.runs[0].samples
        return None if s is None else tuple(p["question"] for p in s)


def per_problem(record: dict, metric: str, threshold: float | None) -> float:
    """One problem's value of ``metric``: the mean over its sampled completions (greedy: its one answer).
    With ``threshold`` the constraint is read again at that budget from each sample's C(y) and peak."""
    samples = record["samples"]

    def ok(s, reading):  # satisfied at the end, or never exceeded on any prefix
        if threshold is None:
            return s["satisfied"] if reading == "end" else s["never_exceeded"]
        # C(y) and peaks are float32 values: compared at float32, as the run itself compared them
        value = s["divergence"] if reading == "end" else s["peak"]
        return np.float32(value) <= np.float32(threshold)

    per_sample = {
        "accuracy_sampled": lambda s: s["correct"],
        "divergence_mean": lambda s: s["divergence"],
        "satisfaction_rate": lambda s: ok(s, "end"),
        "never_exceeded_rate": lambda s: ok(s, "prefix"),
        "success_rate": lambda s: s["correct"] and ok(s, "end"),
        "success_never_exceeded_rate": lambda s: s["correct"] and ok(s, "prefix"),
        "unparsed_rate": lambda s: s["answer"] is None,
    }
    if metric == "accuracy_greedy":
        return float(record["greedy_correct"])
    f = per_sample[metric]
    return float(sum(float(f(s)) for s in samples) / len(samples))


def group_runs(runs: list[Run]) -> list[Group]:
    """Replicate groups (runs equal up to seed and resource keys), each with a label naming the settings that
    differ between groups, in a stable order: by method, threshold, label."""
    by_key: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.path / "summary.json").stat().st_mtime, reverse=True):
        key = json.dumps(r.config, sort_keys=True) if r.config else str(r.path)
        same = by_key.setdefault(key, [])
        if r.seed is not None and any(o.seed == r.seed for o in same):
            # a run repeated with the same seed is the same sample again (runs are deterministic per seed): counting
            # it twice would narrow the interval; the newest run of that seed is kept
            print(f"cdistill report: {r.path} repeats seed {r.seed} of a newer run of the same configuration; "
                  "left out", file=sys.stderr)
            continue
        same.append(r)
    groups = [Group(sorted(rs, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path))))
              for rs in by_key.values()]
    for g in groups:
        g.label = label(g, groups)
    return sorted(groups, key=lambda g: (g.method, g.threshold, g.label))


def label(g: Group, groups: list[Group]) -> str:
    """The settings that set ``g`` apart: keys whose value differs between groups, a method's own keys only
    among groups of that method, the method and constraint left to their own columns."""
    mine = g.runs[0].config
    parts = []
    for key in sorted(mine):
        if key in SHOWN:
            continue
        peers = [h for h in groups if h.method == g.method] if key.startswith("method.") else groups
        if len({h.runs[0].config.get(key) for h in peers}) > 1:
            parts.append(f"{key}={json.loads(mine[key])}")
    return " ".join(parts)


def finished_runs(root: Path) -> list[Run]:
    """Every finished run (a ``summary.json``) under ``root``."""
    runs = [load_run(p.parent) for p in sorted(root.rglob("summary.json"))]
    return [r for r in runs if r is not None]


def metric_rows(run_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a training metric on the student's own samples (steps on teacher or reference
    completions log theirs as ``offpolicy/...`` and are not read)."""
    p = run_dir / "metrics.jsonl"
    rows = [r for r in (read_jsonl(p, skip_malformed=True) if p.is_file() else [])
            if isinstance(r.get(key), int | float) and "reward" in r]
    return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=np.float64)
