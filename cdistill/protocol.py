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
import subprocess
import sys
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from cdistill.selection import Rule, SelectionError, Trial, objective, select

TUNED = ("cmdp", "saute", "lagrangian", "soft_penalty", "grpo", "weakest_link")  # methods with conf/tune/<name>


class ProtocolError(ValueError):
    """A study that cannot go on as declared (one line, exit 2)."""


def declaration(cfg, extra: list[str]) -> dict:
    """What the study is, fixed before anything runs: written to ``<dir>/protocol.yaml`` and compared on resume."""
    unknown = [m for m in cfg.methods if m not in TUNED]
    if unknown:
        raise ProtocolError(f"protocol.methods: no search space for {', '.join(unknown)} (conf/tune/ has "
                            f"{', '.join(TUNED)})")
    named = {m for pair in cfg.verdicts.comparisons for m in pair}
    if not named <= set(cfg.methods):
        raise ProtocolError(f"verdicts.comparisons names {', '.join(sorted(named - set(cfg.methods)))}, which "
                            "protocol.methods does not run")
    if not cfg.final_seeds or cfg.tuning_seed in cfg.final_seeds:
        raise ProtocolError("final_seeds must be fresh seeds: not empty and without the tuning_seed")
    return {"methods": list(cfg.methods), "trials": int(cfg.trials), "steps": int(cfg.steps),
            "tuning_seed": int(cfg.tuning_seed), "sampler_seed": int(cfg.sampler_seed),
            "final_seeds": [int(s) for s in cfg.final_seeds], "train": [*cfg.train, *extra],
            "checkpoint_every": int(cfg.checkpoint_every),
            "verdicts": OmegaConf.to_container(cfg.verdicts, resolve=True)}


def check_declaration(root: Path, declared: dict) -> None:
    path = root / "protocol.yaml"
    if path.is_file():
        before = yaml.safe_load(path.read_text())
        changed = sorted(k for k in set(before) | set(declared) if before.get(k) != declared.get(k))
        if changed:
            raise ProtocolError(f"{root} holds a study declared with other settings ({', '.join(changed)} differ); "
                                "continue it with its own settings (protocol.yaml there) or choose another dir")
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


def run_train(args: list[str], log: Path, what: str) -> None:
    """One ``cdistill train`` command in its own process, its output in ``log``; each job it launches is shown as
    one progress line. A failure stops the study in one line naming the log."""
    cmd = [sys.executable, "-m", "cdistill.cli", "train", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        if not (job / "summary.json").is_file() or not job.name[5:].isdigit():
            continue
        space = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.sweeper.params or {}
        drawn = [o for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if o.split("=", 1)[0] in space]
        out.append(Trial(int(job.name[5:]), tuple(drawn), json.loads((job / "summary.json").read_text()), str(job)))
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
                            **{k: t.summary.get(k) for k in ("accuracy_sampled", "accuracy_greedy",
                                                             "never_exceeded_rate", "satisfaction_rate",
                                                             "divergence_mean", "train_seconds")}}
                           for t in trials]}
    (root / "selection.json").write_text(json.dumps(out, indent=2))
    return out


def finals_args(root: Path, method: str, chosen: dict, d: dict) -> list[str]:
    return ["-m", f"method={method}", *chosen["overrides"], f"seed={','.join(map(str, d['final_seeds']))}",
            f"optim.steps={d['steps']}", "eval.split=test", "resume=auto", f"hydra.sweep.dir={root / 'finals'}",
            "hydra.sweep.subdir=${method.name}_seed${seed}", f"checkpoint.every={d['checkpoint_every']}",
            "checkpoint.keep=1", "logging.progress=false", *d["train"]]


def selection_markdown(selected: dict, d: dict) -> str:
    lines = ["## Selection (validation split only)", "",
             f"Rule, declared before any run: {next(iter(selected.values()))['rule']}.", "",
             f"Every method: {d['trials']} trials from its own search space (conf/tune/<method>.yaml), "
             f"{d['steps']} steps each, training seed {d['tuning_seed']}, sampler seed {d['sampler_seed']}.", ""]
    for method, s in selected.items():
        lines += [f"### {method}: trial {s['trial']} selected" + ("" if s["met_target"] else
                  " (no trial met the target: the closest one)"), "",
                  "| trial | settings | acc (sampled) | never exceeded | satisfied at end | mean C(y) | score |",
                  "|---|---|---|---|---|---|---|"]
        for t in s["trials"]:
            mark = " **(selected)**" if t["trial"] == s["trial"] else ""
            lines.append(f"| {t['trial']}{mark} | {' '.join(t['overrides']) or '-'} | {t['accuracy_sampled']:.3f} | "
                         f"{t['never_exceeded_rate']:.3f} | {t['satisfaction_rate']:.3f} | "
                         f"{t['divergence_mean']:.2f} | {t['objective']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot_trials(selected: dict, target: float | None, out: Path) -> None:
    """Every trial of every method on one validation plane: accuracy against the constraint rate, the selected
    trial of each method ringed, the target drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    for i, (method, s) in enumerate(selected.items()):
        xs = [t["never_exceeded_rate"] for t in s["trials"]]
        ys = [t["accuracy_sampled"] for t in s["trials"]]
        points = ax.scatter(xs, ys, marker="osD^vP*X"[i % 8], label=method, alpha=0.75)
        chosen = next(t for t in s["trials"] if t["trial"] == s["trial"])
        ax.scatter([chosen["never_exceeded_rate"]], [chosen["accuracy_sampled"]], s=220, facecolors="none",
                   edgecolors=points.get_facecolor()[0], linewidths=2)
    if target is not None:
        ax.axvline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("never exceeded the budget (validation samples)")
    ax.set_ylabel("sampled accuracy (validation)")
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
        run_train(tuning_args(root, method, d), root / "logs" / f"tuning_{method}.log", f"{method} trial")
        clock.add("tuning", time.time() - t)


def finals(root: Path, d: dict, selected: dict, clock: Clock) -> None:
    """Each method's selected settings on every final seed, each run read once on the test split."""
    for method in d["methods"]:
        print(f"final runs of {method} (test split, seeds {', '.join(map(str, d['final_seeds']))})", flush=True)
        t = time.time()
        run_train(finals_args(root, method, selected[method], d), root / "logs" / f"finals_{method}.log",
                  f"{method} final")
        clock.add("finals", time.time() - t)


def run(cfg, extra: list[str]) -> Path:
    root = Path(cfg.dir)
    d = declaration(cfg, extra)
    check_declaration(root, d)
    clock = Clock(root)
    print(f"study {root}: {len(d['methods'])} methods x {d['trials']} trials, then {len(d['final_seeds'])} seeds "
          f"each; {d['steps']} steps a run", flush=True)
    tune(root, d, clock)
    selected = select_all(root, d)
    rule = selection_rule(root, d["methods"][0])
    plot_trials(selected, rule.target, root / "validation_pareto.png")
    for method, s in selected.items():
        print(f"selected for {method}: trial {s['trial']} {' '.join(s['overrides'])}"
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
             (root / "finals" / "report.md").read_text()]
    (root / "study.md").write_text("\n".join(study))
    print(report.stdout)
    print(f"study finished: {root / 'study.md'}; cost {cost} ({total / 60:.1f} min)")
    return root
