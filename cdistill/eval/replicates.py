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
# methods whose training never reads the budget d (summaries before ``trains_on_budget`` existed are read by name)
IGNORES_BUDGET = ("soft_penalty", "grpo", "opd", "gkd", "sft", "seqkd")
# keys of model.teacher that say where or how the teacher is served, not which distribution C(y) is measured against
TEACHER_RESOURCES = ("model.teacher.shard", "model.teacher.server.base_url", "model.teacher.server.timeout",
                     "model.teacher.server.retries", "model.teacher.server.max_concurrency",
                     "model.teacher.server.api_key_env")


# the task settings that decide which problems the embedded teacher was trained on (its cache key holds them)
EMBEDDED_TASK_KEYS = ("task.name", "task.source", "task.seed", "task.held_out_fraction", "task.prompt_template")


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree, sort_keys=True)}
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out or {prefix: "{}"}


def without_resources(flat: dict) -> dict:
    # ``constraints: {}`` (``model.teachers: {}``, ``method.penalties: {}``) is how a single-constraint run written
    # after several constraints existed says what an older run said by leaving the key out: the two measure the same
    # thing and must group and compare alike
    return {k.rstrip("."): v for k, v in flat.items()
            if not any(k == r + "." or k.startswith(r + ".") for r in RESOURCE_KEYS)
            and not (k in ("constraints.", "model.teachers.", "method.penalties.") and v == "{}")}


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
    def trains_on_budget(self) -> bool:
        """Whether its training reads the budget d (cmdp, lagrangian, ...); soft_penalty, grpo, opd, gkd, sft and seqkd
        do not: their C(y) is only read at a d, for the satisfaction columns."""
        known = self.first.get("trains_on_budget")
        return bool(known) if isinstance(known, bool) else self.method not in IGNORES_BUDGET

    @property
    def teacher(self) -> tuple:
        """What C(y) is measured against: ``model.teacher.*`` (its name or path, precision, quantisation, a served
        model's name and top k; not where or how it is served) and, for the embedded teacher, the recipe it is built
        from (``model.embedded.*`` but the student's: e.g. ``model.embedded.teacher.flaw``), as sorted
        ``(key, value)`` pairs from the resolved config; () for a run that recorded no config."""
        config = self.runs[0].config
        embedded = json.loads(config.get("model.teacher.name_or_path", "null")) == "embedded:teacher"
        out = {k: v for k, v in config.items()
               if (k.startswith("model.teacher.") and k not in TEACHER_RESOURCES)
               or (embedded and (k.startswith("model.embedded.") and not k.startswith("model.embedded.student.")
                                 or k in EMBEDDED_TASK_KEYS or k.startswith("task.difficulty.")))}
        if embedded:  # the problems it was trained on: a run from before the validation split held out none
            out["task.validation_fraction"] = json.dumps(float(json.loads(config.get("task.validation_fraction",
                                                                                       "0"))))
        return tuple(sorted(out.items()))

    @property
    def constraints(self) -> dict:
        """``{name: {teacher, cost, kind, threshold}}`` of a run with several constraints (the first, "teacher", is
        the one ``threshold``, ``cost`` and ``kind`` describe); {} for a single-constraint run."""
        found = self.first.get("constraints")
        return found if isinstance(found, dict) and len(found) > 1 else {}

    @property
    def budgets(self) -> list[str]:
        """The names of its constraints, the first first, when it has several; [] otherwise."""
        return list(self.constraints)

    @property
    def other_budgets(self) -> tuple:
        """What its constraints beyond the first measure, and at which budgets: a joint rate is only the same
        quantity in two groups when these agree (the first constraint's budget is read again by ``pairs``). Their
        teachers are named by the constraint; what each one is comes from ``model.teachers.<name>.*`` (where or
        how it is served left out, as for ``teacher``)."""
        if not self.constraints:
            return ()
        budgets = tuple((n, c.get("teacher"), c.get("cost"), c.get("kind"), c.get("threshold"))
                        for n, c in list(self.constraints.items())[1:])
        teachers = tuple(sorted((k, v) for k, v in self.runs[0].config.items() if k.startswith("model.teachers.")
                                and "model.teacher." + k.split(".", 3)[-1] not in TEACHER_RESOURCES))
        return budgets + teachers

    def comparable(self, other: Group) -> bool:
        """Whether two groups measure the same thing: the same constraint (cost and kind), against the same teacher
        (a default run and a ``+exp=flawed_teacher`` one read C(y) against different teachers), and the same further
        constraints (with them, satisfied means every budget met)."""
        return (self.constraint == other.constraint and self.teacher == other.teacher
                and self.other_budgets == other.other_budgets)

    @property
    def constraint_text(self) -> str:
        cost, kind = self.constraint
        if not self.trains_on_budget:  # never trained on d: its C(y) is read at one for the satisfaction columns
            text = f"{kind} of {cost}, read at d = {self.threshold:g}" if cost else f"read at d = {self.threshold:g}"
        else:
            text = f"{kind} of {cost} <= {self.threshold:g}" if cost else f"d = {self.threshold:g}"
        if not self.constraints:
            return text
        rest = [f"{n}: {c.get('kind')} of {c.get('cost')}{' <= ' if self.trains_on_budget else ', read at d = '}"
                f"{_number(c.get('threshold'))}" for n, c in list(self.constraints.items())[1:]]
        return "; ".join([f"{self.budgets[0]}: {text}", *rest])

    @property
    def name(self) -> str:
        """The row's name: the method, its budget d when its training reads one, and the settings that set it apart."""
        head = f"{self.method} d={self.threshold:g}" if self.trains_on_budget else self.method
        return head + (f" {self.label}" if self.label else "")

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


# metrics that a run with several constraints also reports per constraint, as ``<metric>@<constraint name>``
PER_BUDGET = ("divergence_mean", "satisfaction_rate", "never_exceeded_rate", "success_rate",
              "success_never_exceeded_rate")


def per_problem(record: dict, metric: str, threshold: float | None) -> float:
    """One problem's value of ``metric``: the mean over its sampled completions (greedy: its one answer).
    With ``threshold`` the constraint is read again at that budget from each sample's C(y) and peak.

    ``<metric>@<name>`` (a ``PER_BUDGET`` metric) reads constraint ``name`` alone from each sample's ``budgets``
    (KeyError without them). With several constraints a ``threshold`` moves the first constraint's budget only: the
    joint readings keep the other constraints' own verdicts, and ``@`` readings of the others are unchanged."""
    samples = record["samples"]
    base, _, budget = metric.partition("@")
    if budget and base not in PER_BUDGET:
        raise KeyError(metric)

    def ok(s, reading):  # satisfied at the end, or never exceeded on any prefix
        flag = "satisfied" if reading == "end" else "never_exceeded"
        budgets = s.get("budgets") or {}
        first = next(iter(budgets), None)
        own = s["budgets"][budget] if budget else s
        if threshold is None or (budget and budget != first):
            return own[flag]
        # C(y) and peaks are float32 values: compared at float32, as the run itself compared them
        value = own["divergence"] if reading == "end" else own["peak"]
        met = np.float32(value) <= np.float32(threshold)
        if budget:
            return met
        return met and all(b[flag] for n, b in budgets.items() if n != first)

    per_sample = {
        "accuracy_sampled": lambda s: s["correct"],
        "divergence_mean": lambda s: s["budgets"][budget]["divergence"] if budget else s["divergence"],
        "satisfaction_rate": lambda s: ok(s, "end"),
        "never_exceeded_rate": lambda s: ok(s, "prefix"),
        "success_rate": lambda s: s["correct"] and ok(s, "end"),
        "success_never_exceeded_rate": lambda s: s["correct"] and ok(s, "prefix"),
        "unparsed_rate": lambda s: s["answer"] is None,
    }
    if metric == "accuracy_greedy":
        return float(record["greedy_correct"])
    f = per_sample[base]
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


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def shown(value) -> str:
    """A setting as a label shows it: a tuned float to 3 significant digits (8.081649057856229 -> 8.08), a short
    one as written (1.0, 0.03)."""
    return f"{value:.3g}" if isinstance(value, float) and len(repr(value)) > 6 else str(value)


def label(g: Group, groups: list[Group], leave_out: tuple = ()) -> str:
    """The settings that set ``g`` apart: keys whose value differs between groups, a method's own keys only
    among groups of that method, the method and constraint left to their own columns (and the keys in
    ``leave_out``: a figure that names the teacher elsewhere)."""
    mine = g.runs[0].config
    parts = []
    for key in sorted(mine):
        if key in SHOWN or key in leave_out:
            continue
        peers = [h for h in groups if h.method == g.method] if key.startswith("method.") else groups
        if len({h.runs[0].config.get(key) for h in peers}) > 1:
            parts.append(f"{key}={shown(json.loads(mine[key]))}")
    if not g.trains_on_budget and len({h.threshold for h in groups if h.method == g.method}) > 1:
        # groups of a method that ignores d, read at different d: the same training, told apart by the reading
        parts.append(f"read at d={g.threshold:g}")
    return " ".join(parts)


def teacher_names(groups: list[Group]) -> dict[int, str]:
    """``{id(group): text}`` naming each group's teacher by what sets it apart (``embedded:teacher flaw=sells``), or
    "" for every group when they all read C(y) against the same teacher."""
    teachers = {g.teacher for g in groups}
    if len(teachers) <= 1:
        return {id(g): "" for g in groups}
    keys = sorted({k for t in teachers for k, _ in t})
    differing = [k for k in keys if k != "model.teacher.name_or_path" and len({dict(t).get(k) for t in teachers}) > 1]
    out = {}
    for g in groups:
        mine = dict(g.teacher)
        name = json.loads(mine.get("model.teacher.name_or_path", "null")) or "(not recorded)"
        extras = [f"{k.rsplit('.', 1)[-1]}={json.loads(mine[k])}" for k in differing if k in mine]
        out[id(g)] = " ".join([str(name), *extras])
    return out


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
