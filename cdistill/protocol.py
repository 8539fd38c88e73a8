"""``cdistill protocol``: tune every method with the same budget on validation, select by a declared rule, train
the selected settings on fresh seeds, read test once, and report only the declared verdicts.

The steps run as ``cdistill train`` commands of their own (Hydra's Optuna sweeper for the tuning, a plain
multirun for the finals), so that every run of a study is an ordinary run directory that ``cdistill report`` and
``cdistill eval`` read. Everything is resumable: a trial or final run that finished is given back, not trained
again (``resume=auto``), one stopped midway continues from its newest checkpoint, and the sweeper, seeded, draws
the same settings again given the same results. The orchestration holds no mathematics: the rule is
``cdistill.selection``, the verdicts ``cdistill.eval.report``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from cdistill.selection import Rule, SelectionError, Trial, objective, select

TUNED = ("cmdp", "saute", "lagrangian", "soft_penalty", "grpo", "weakest_link")  # methods with conf/tune/<name>
CONF = Path(__file__).resolve().parent.parent / "conf"
# what the protocol sets itself in every run: an override of these would contradict the declaration (the finals'
# split, the steps, the seeds) or the resuming; the search spaces' keys are the sweeper's and the selection's
OWNED = ("seed", "optim.steps", "eval.split", "resume", "overwrite", "method", "method.name")
OWNED_PREFIXES = ("checkpoint.", "hydra.")


class ProtocolError(ValueError):
    """A study that cannot go on as declared (one line, exit 2)."""


def search_space(method: str) -> dict:
    """The sweeper's parameters for ``method``: conf/tune/study.yaml's shared knobs and the method's own."""
    params = {}
    for name in ("study", method):
        tree = yaml.safe_load((CONF / "tune" / f"{name}.yaml").read_text()) or {}
        params.update(((tree.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    return params


def declared_rule(train: list[str]) -> dict:
    """The selection rule every trial is scored by: conf/config.yaml's ``selection`` with the study's overrides."""
    rule = dict(yaml.safe_load((CONF / "config.yaml").read_text())["selection"])
    for o in train:
        key, _, value = o.lstrip("+").partition("=")
        if key.startswith("selection.") and key[len("selection."):] in rule:
            rule[key[len("selection."):]] = yaml.safe_load(value)
    return rule


def method_constraint(method: str) -> dict:
    """The constraint a method's config sets for itself (weakest_link's), or {}."""
    tree = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text()) or {}
    return tree.get("constraint") or {}


def check_overrides(train: list[str], spaces: dict) -> None:
    """Refuse, before anything is written, a run override that the protocol sets itself or that a search space
    tunes: it would contradict the declaration (the finals' split, steps and seeds) or fix a tuned knob."""
    tuned = {k for space in spaces.values() for k in space}
    for o in train:
        key = o.lstrip("+~").partition("=")[0]
        if key in OWNED or key.startswith(OWNED_PREFIXES) or key in tuned:
            what = "a search space tunes it (conf/tune/)" if key in tuned else "the protocol sets it itself"
            raise ProtocolError(f"the run override {o!r} cannot be given to a study: {what}; declare steps, "
                                "trials and seeds as the protocol's own settings (steps=, trials=, final_seeds=)")


def declaration(cfg, extra: list[str]) -> dict:
    """What the study is, fixed before anything runs: written to ``<dir>/protocol.yaml`` and compared on resume."""
    from cdistill.eval.report import DeclarationError, parse_declaration

    unknown = [m for m in cfg.methods if m not in TUNED]
    if unknown:
        raise ProtocolError(f"protocol.methods: no search space for {', '.join(unknown)} (conf/tune/ has "
                            f"{', '.join(TUNED)})")
    verdicts = OmegaConf.to_container(cfg.verdicts, resolve=True)
    try:  # the report's own reading of the declaration, now rather than after the study has trained
        parse_declaration(verdicts, "protocol verdicts")
    except DeclarationError as e:
        raise ProtocolError(str(e)) from None
    named = {m for pair in cfg.verdicts.comparisons for m in pair}
    if not named <= set(cfg.methods):
        raise ProtocolError(f"verdicts.comparisons names {', '.join(sorted(named - set(cfg.methods)))}, which "
                            "protocol.methods does not run")
    for a, b in cfg.verdicts.comparisons:
        if method_constraint(a) != method_constraint(b):
            raise ProtocolError(f"verdicts.comparisons [{a}, {b}]: the two train on different constraints "
                                f"({method_constraint(a) or 'the experiment'} against "
                                f"{method_constraint(b) or 'the experiment'}): their C(y) cannot be compared")
    if not cfg.final_seeds or cfg.tuning_seed in cfg.final_seeds:
        raise ProtocolError("final_seeds must be fresh seeds: not empty and without the tuning_seed")
    spaces = {m: search_space(m) for m in cfg.methods}
    train = [*cfg.train, *extra]
    check_overrides(train, spaces)
    return {"methods": list(cfg.methods), "trials": int(cfg.trials), "steps": int(cfg.steps),
            "tuning_seed": int(cfg.tuning_seed), "sampler_seed": int(cfg.sampler_seed),
            "final_seeds": [int(s) for s in cfg.final_seeds], "train": train,
            "checkpoint_every": int(cfg.checkpoint_every), "verdicts": verdicts,
            "selection": declared_rule(train), "search_spaces": spaces}


def check_declaration(root: Path, declared: dict) -> None:
    path = root / "protocol.yaml"
    if path.is_file():
        before = yaml.safe_load(path.read_text())
        # a study declared by an earlier cdistill did not record every key this one does: compared on what it did
        # record, and the rest is added
        changed = sorted(k for k in before if before.get(k) != declared.get(k))
        if changed:
            raise ProtocolError(f"{root} holds a study declared with other settings ({', '.join(changed)} differ); "
                                "continue it with its own settings (protocol.yaml there) or choose another dir")
        if set(declared) - set(before):
            path.write_text(yaml.safe_dump(declared, sort_keys=False))
        return
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(declared, sort_keys=False))


class Clock:
    """Wall-clock seconds per phase, added up over every session of a study (``cost.json``)."""

    def __init__(self, root: Path):
        self.path = root / "cost.json"
        self.spent = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, phase: str, seconds: float) -> None:
        self.spent[phase] = self.spent.get(phase, 0.0) + seconds
        self.path.write_text(json.dumps(self.spent, indent=2))


class Stopped(Exception):
    """The study was asked to stop (SIGTERM, SIGINT): the running ``cdistill train`` was stopped too."""


def run_train(args: list[str], log: Path, what: str) -> None:
    """One ``cdistill train`` command in its own process, its output in ``log``; each job it launches is shown as
    one progress line. A failure stops the study in one line naming the log. A signal to the study is passed on:
    the run checkpoints and stops (exit 75), and the study stops with it, so that no orphaned run keeps training in
    a directory that a rerun of the study would train in too."""
    cmd = [sys.executable, "-m", "cdistill.cli", "train", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stopped = []

        def pass_on(signum, frame):
            stopped.append(signum)
            proc.send_signal(signal.SIGTERM)

        before = {s: signal.signal(s, pass_on) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            last_error = ""
            for line in proc.stdout:
                fh.write(line)
                if "\t#" in line and "[HYDRA]" in line:  # "#3 : optim.lr=... method.penalty=..."
                    print(f"  {what} {line.split(chr(9) + '#', 1)[1].split(':', 1)[0].strip()} "
                          f"({time.time() - t:.0f} s)", flush=True)
                elif "already finished under this configuration" in line:
                    print("    (finished before: reused)", flush=True)
                elif line.startswith("cdistill: "):
                    last_error = line.strip()
            code = proc.wait()
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)
    if stopped:
        # the run's own last line says whether it finished its step and wrote a checkpoint, or stopped at once
        said = f" ({last_error.removeprefix('cdistill: ')})" if last_error else ""
        raise Stopped(f"stopped by {signal.Signals(stopped[0]).name} during {what}{said}")
    if code != 0:
        raise ProtocolError(f"{what} failed (exit {code}): {last_error or 'see the log'}; log: {log}")


def tuning_args(root: Path, method: str, d: dict) -> list[str]:
    return ["-m", f"+tune={method}", f"hydra.sweep.dir={root / 'tuning' / method}",
            f"hydra.sweeper.n_trials={d['trials']}", f"hydra.sweeper.sampler.seed={d['sampler_seed']}",
            f"seed={d['tuning_seed']}", f"optim.steps={d['steps']}", "resume=auto",
            f"checkpoint.every={d['checkpoint_every']}", "checkpoint.keep=1", "logging.progress=false", *d["train"]]


def trials_of(study: Path) -> list[Trial]:
    """The finished trials of one method's study, with the settings the sweeper drew for each (the overrides of
    its job whose key is in the search space)."""
    out = []
    for job in sorted(study.glob("trial*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1):
        if not job.name[5:].isdigit():
            continue
        if (job / "summary.json").is_file():
            summary = json.loads((job / "summary.json").read_text())
        elif (job / "failed.json").is_file():  # its training failed: scored as the worst, never selected
            summary = {"failed": json.loads((job / "failed.json").read_text())["failed"]}
        else:
            continue
        space = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.sweeper.params or {}
        drawn = [o for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if o.split("=", 1)[0] in space]
        out.append(Trial(int(job.name[5:]), tuple(drawn), summary, str(job)))
    return out


def selection_rule(root: Path, method: str) -> Rule:
    """The rule every trial of the study was scored by (its config.yaml), the same for every trial."""
    rules = {Rule.of(OmegaConf.load(job / "config.yaml").selection)
             for job in (root / "tuning" / method).glob("trial*") if (job / "config.yaml").is_file()}
    if len(rules) != 1:
        raise ProtocolError(f"the trials of {method} were scored by {len(rules)} different selection rules")
    return rules.pop()


def select_all(root: Path, d: dict) -> dict:
    """Each method's selected trial (``selection.json``), by the declared rule on validation only."""
    out = {}
    for method in d["methods"]:
        trials = trials_of(root / "tuning" / method)
        if len(trials) < d["trials"]:
            raise ProtocolError(f"{method}: {len(trials)} of {d['trials']} trials finished; rerun to continue")
        rule = selection_rule(root, method)
        try:
            best, met = select(trials, rule)
        except SelectionError as e:
            raise ProtocolError(f"{method}: {e}") from None
        out[method] = {"trial": best.number, "overrides": list(best.overrides), "met_target": met,
                       "rule": rule.describe(), "trials": [
                           {"trial": t.number, "overrides": list(t.overrides), "objective": objective(t.summary, rule),
                            **({"failed": t.summary["failed"]} if t.summary.get("failed") else {}),
                            **{k: t.summary.get(k) for k in ("accuracy_sampled", "accuracy_greedy", "success_rate",
                                                             "success_never_exceeded_rate", "never_exceeded_rate",
                                                             "satisfaction_rate", "divergence_mean", "entropy",
                                                             "train_seconds")}}
                           for t in trials]}
    (root / "selection.json").write_text(json.dumps(out, indent=2))
    return out


def finals_args(root: Path, method: str, chosen: dict, d: dict) -> list[str]:
    return ["-m", f"method={method}", *chosen["overrides"], f"seed={','.join(map(str, d['final_seeds']))}",
            f"optim.steps={d['steps']}", "eval.split=test", "resume=auto", f"hydra.sweep.dir={root / 'finals'}",
            "hydra.sweep.subdir=${method.name}_seed${seed}", f"checkpoint.every={d['checkpoint_every']}",
            "checkpoint.keep=1", "logging.progress=false", *d["train"]]


def readable(overrides: list[str]) -> str:
    """Drawn settings for a reader: ``optim.lr=3.54e-05`` (the exact values are in selection.json and the runs)."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        try:
            value = f"{float(value):.3g}" if "." in value or "e" in value else value
        except ValueError:
            pass
        out.append(f"{key}={value}")
    return " ".join(out) or "-"


def selection_markdown(selected: dict, d: dict) -> str:
    lines = ["## Selection (validation split only)", "",
             f"Rule, declared before any run: {next(iter(selected.values()))['rule']}.", "",
             f"Every method: {d['trials']} trials from its own search space (conf/tune/<method>.yaml), "
             f"{d['steps']} steps each, training seed {d['tuning_seed']}, sampler seed {d['sampler_seed']}.", ""]
    for method, s in selected.items():
        lines += [f"### {method}: trial {s['trial']} selected" + ("" if s["met_target"] else
                  " (no trial met the target: the closest one)"), "",
                  "| trial | settings | acc (sampled) | acc (greedy) | never exceeded | satisfied at end | mean C(y) | "
                  "score |", "|---|---|---|---|---|---|---|---|"]
        for t in s["trials"]:
            mark = " **(selected)**" if t["trial"] == s["trial"] else ""
            if t.get("failed"):
                lines.append(f"| {t['trial']} | {readable(t['overrides'])} | failed: {t['failed']} | | | | | "
                             f"{t['objective']:.3f} |")
                continue
            lines.append(f"| {t['trial']}{mark} | {readable(t['overrides'])} | {t['accuracy_sampled']:.3f} | "
                         f"{t['accuracy_greedy']:.3f} | {t['never_exceeded_rate']:.3f} | "
                         f"{t['satisfaction_rate']:.3f} | {t['divergence_mean']:.2f} | {t['objective']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def finals_markdown(report: Path) -> str:
    """The finals' report for study.md, one directory up: its figures' links point into ``finals/``."""
    text = report.read_text()
    for figure in ("pareto.png", "curves.png", "families.png"):
        text = text.replace(f"]({figure})", f"](finals/{figure})")
    return text


def plot_trials(selected: dict, rule: Rule, out: Path) -> None:
    """Every trial of every method on one validation plane: accuracy against the constraint rate, the selected
    trial of each method ringed, the target drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    for i, (method, s) in enumerate(selected.items()):
        finished = [t for t in s["trials"] if not t.get("failed")]
        xs = [t[rule.constraint_metric] for t in finished]
        ys = [t[rule.metric] for t in finished]
        points = ax.scatter(xs, ys, marker="osD^vP*X"[i % 8], label=method, alpha=0.75)
        chosen = next(t for t in s["trials"] if t["trial"] == s["trial"])
        ax.scatter([chosen[rule.constraint_metric]], [chosen[rule.metric]], s=220, facecolors="none",
                   edgecolors=points.get_facecolor()[0], linewidths=2)
    ax.axvline(rule.target, color="grey", linestyle="--", linewidth=1, label=f"target {rule.target:g}")
    ax.set_xlabel(f"{rule.constraint_metric} (validation samples)")
    ax.set_ylabel(f"{rule.metric} (validation)")
    ax.set_title("every tuning trial; ringed: each method's selected settings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def tune(root: Path, d: dict, clock: Clock) -> None:
    """Every method's tuning study, on the validation split only."""
    for method in d["methods"]:
        print(f"tuning {method} (validation split)", flush=True)
        t = time.time()
        try:
            run_train(tuning_args(root, method, d), root / "logs" / f"tuning_{method}.log", f"{method} trial")
        finally:  # a session that stops midway still counts what it spent
            clock.add("tuning", time.time() - t)


def finals(root: Path, d: dict, selected: dict, clock: Clock) -> None:
    """Each method's selected settings on every final seed, each run read once on the test split."""
    for method in d["methods"]:
        print(f"final runs of {method} (test split, seeds {', '.join(map(str, d['final_seeds']))})", flush=True)
        t = time.time()
        try:
            run_train(finals_args(root, method, selected[method], d), root / "logs" / f"finals_{method}.log",
                      f"{method} final")
        finally:
            clock.add("finals", time.time() - t)


def run(cfg, extra: list[str]) -> Path:
    root = Path(cfg.dir)
    d = declaration(cfg, extra)
    check_declaration(root, d)
    clock = Clock(root)
    again = f"cdistill protocol dir={root}" + (f" -- {' '.join(extra)}" if extra else "")
    print(f"study {root}: {len(d['methods'])} methods x {d['trials']} trials, then {len(d['final_seeds'])} seeds "
          f"each; {d['steps']} steps a run (the same command with dir= continues it: {again})", flush=True)
    try:
        return run_phases(root, d, clock)
    except Stopped as e:
        raise ProtocolError(f"{e}; to continue: {again}") from None
    except ProtocolError as e:
        raise ProtocolError(f"{e}; to continue after a fix: {again}") from None


def run_phases(root: Path, d: dict, clock: Clock) -> Path:
    tune(root, d, clock)
    selected = select_all(root, d)
    rule = selection_rule(root, d["methods"][0])
    plot_trials(selected, rule, root / "validation_pareto.png")
    for method, s in selected.items():
        print(f"selected for {method}: trial {s['trial']} {readable(s['overrides'])}"
              + ("" if s["met_target"] else " (no trial met the target)"), flush=True)
    finals(root, d, selected, clock)
    (root / "finals" / "verdicts.yaml").write_text(yaml.safe_dump(d["verdicts"], sort_keys=False))
    t = time.time()
    report = subprocess.run([sys.executable, "-m", "cdistill.cli", "report", str(root / "finals")],
                            capture_output=True, text=True)
    if report.returncode != 0:
        raise ProtocolError(f"the report failed: {(report.stderr or report.stdout).strip().splitlines()[-1]}")
    clock.add("report", time.time() - t)
    total = sum(clock.spent.values())
    cost = ", ".join(f"{k} {v / 60:.1f} min" for k, v in clock.spent.items())
    study = [f"# Study {root.name}", "", f"Declared settings: `{root / 'protocol.yaml'}`. Cost: {cost} "
             f"({total / 60:.1f} min in all, every session of the study added up).", "",
             selection_markdown(selected, d), "![every trial on validation](validation_pareto.png)", "",
             "## Final runs (test split, read once per run)", "",
             finals_markdown(root / "finals" / "report.md")]
    (root / "study.md").write_text("\n".join(study))
    print(report.stdout)
    print(f"study finished: {root / 'study.md'}; cost {cost} ({total / 60:.1f} min)")
    return root
