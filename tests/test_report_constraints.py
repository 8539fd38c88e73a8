"""``cdistill report`` over runs with several constraints (one budget per teacher): the per-constraint table, the
divergence allocation per family, the multipliers of each constraint; and single-constraint reports unchanged."""

import json
from pathlib import Path

import numpy as np
import yaml

from cdistill.eval.replicates import finished_runs, group_runs
from cdistill.eval.report import report_main

GOLDEN = Path(__file__).parent / "data" / "report_single_constraint"
FIRST = "teacher"  # the name of the constraint against model.teacher


def fake_run(root, name, *, method, seed, budgets, correct, families=None, lam=None):
    """A finished run as cdistill writes it under the several-constraints contract.

    ``budgets``: ``{constraint: (d, divergence, peak)}``, the first named "teacher", each ``divergence``/``peak`` a
    ``[problems][samples]`` list (``peak`` None: the divergence); ``correct`` the same shape. With one budget the run's
    files are exactly a single-constraint run's (no ``@`` keys, no ``budgets``); with several, the rates without ``@``
    are joint. ``lam``: a lagrangian's multipliers ``{constraint: per-step slope}``."""
    names = list(budgets)
    assert names[0] == FIRST
    several = len(names) > 1
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- seed={seed}\n")
    d0 = budgets[FIRST][0]
    extra = {n: {"teacher": f"t_{n}", "cost": "logratio", "kind": "sum", "threshold": budgets[n][0],
                 "pathwise_gradient": False} for n in names[1:]}
    config = {"seed": seed, "method": {"name": method},
              "constraint": {"cost": "logratio", "kind": "sum", "threshold": d0},
              "constraints": extra,
              "model": {"teacher": {"name_or_path": "embedded:teacher", "dtype": "float32"}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    n_problems = len(correct)
    per = {n: (np.array(dv, dtype=float), np.array(pk if pk is not None else dv, dtype=float), d)
           for n, (d, dv, pk) in budgets.items()}
    ok = np.array(correct, dtype=bool)
    sat = {n: dv <= d for n, (dv, pk, d) in per.items()}
    never = {n: pk <= d for n, (dv, pk, d) in per.items()}
    joint_sat = np.logical_and.reduce([sat[n] for n in names])
    joint_never = np.logical_and.reduce([never[n] for n in names])
    records = []
    for i in range(n_problems):
        samples = []
        for j in range(ok.shape[1]):
            s = {"text": "", "answer": "1", "correct": bool(ok[i, j]), "divergence": float(per[FIRST][0][i, j]),
                 "peak": float(per[FIRST][1][i, j]), "satisfied": bool(joint_sat[i, j]),
                 "never_exceeded": bool(joint_never[i, j])}
            if several:
                s["budgets"] = {n: {"divergence": float(per[n][0][i, j]), "peak": float(per[n][1][i, j]),
                                    "satisfied": bool(sat[n][i, j]), "never_exceeded": bool(never[n][i, j])}
                                for n in names}
            samples.append(s)
        records.append({"question": f"q{i}", **({"family": families[i]} if families else {}), "gold": "1",
                        "greedy": "", "greedy_correct": bool(ok[i, 0]), "greedy_answer": "1", "samples": samples})
    (run / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def rates(rows) -> dict:
        out = {"accuracy_sampled": float(ok[rows].mean()), "divergence_mean": float(per[FIRST][0][rows].mean()),
               "satisfaction_rate": float(joint_sat[rows].mean()),
               "never_exceeded_rate": float(joint_never[rows].mean()),
               "success_rate": float((ok & joint_sat)[rows].mean()),
               "success_never_exceeded_rate": float((ok & joint_never)[rows].mean())}
        if several:
            for n in names:
                out |= {f"divergence_mean@{n}": float(per[n][0][rows].mean()),
                        f"satisfaction_rate@{n}": float(sat[n][rows].mean()),
                        f"never_exceeded_rate@{n}": float(never[n][rows].mean()),
                        f"success_rate@{n}": float((ok & sat[n])[rows].mean()),
                        f"success_never_exceeded_rate@{n}": float((ok & never[n])[rows].mean())}
        return out

    evaluation = {**rates(slice(None)), "accuracy_greedy": float(ok[:, 0].mean()), "unparsed_rate": 0.0,
                  "threshold": d0, "cost": "logratio", "kind": "sum", "n_problems": n_problems}
    if several:
        evaluation["constraints"] = {n: {"teacher": "model.teacher" if n == FIRST else f"t_{n}", "cost": "logratio",
                                         "kind": "sum", "threshold": budgets[n][0]} for n in names}
    if families:
        fams = sorted(set(families))
        evaluation["families"] = {f: {"n_problems": families.count(f),
                                      **rates(np.array([x == f for x in families]))} for f in fams}
    summary = {"method": method, "trains_on_budget": method not in ("soft_penalty", "grpo"), **evaluation,
               "steps": 3, "train_seconds": 1.0, "start_accuracy_sampled": 0.2}
    if lam is not None and several:
        summary["method_state"] = {n: {"lam": 3 * slope} for n, slope in lam.items()}
    elif lam is not None:
        summary["method_state"] = {"lam": 3 * lam[FIRST]}
    (run / "summary.json").write_text(json.dumps(summary))
    start = {"step": 0, **({"families": {f: {"accuracy_sampled": 0.2, "divergence_mean": 1.0}
                                         for f in set(families)}} if families else {})}
    (run / "evals.jsonl").write_text(json.dumps(start) + "\n" + json.dumps({"step": 3, **evaluation}) + "\n")
    rows = []
    for step in (1, 2, 3):
        row = {"step": step, "reward": evaluation["accuracy_sampled"] + 0.01 * step,
               "divergence_mean": evaluation["divergence_mean"], "satisfaction_rate": evaluation["satisfaction_rate"]}
        if several:
            row |= {k: v for k, v in rates(slice(None)).items() if "@" in k}
        if lam is not None:
            row["lambda"] = lam[FIRST] * step
            if several:
                row |= {f"lambda@{n}": slope * step for n, slope in lam.items()}
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def sweep(root, several: bool, families: bool = True):
    """Three methods (cmdp, lagrangian at d = 10; soft_penalty, which ignores d, at d = 20) over two seeds, on ten
    problems of two families × 4 samples; with ``several``, a second budget "tutor" (d = 6) on every run."""
    fams = ["sells"] * 4 + ["other"] * 6
    for m, (method, d) in enumerate((("cmdp", 10.0), ("lagrangian", 10.0), ("soft_penalty", 20.0))):
        for seed in (0, 1):
            rng = np.random.default_rng(100 * m + seed)
            correct = (rng.random((10, 4)) < 0.4 + 0.1 * m).tolist()
            div = rng.uniform(2.0, 14.0 + 4 * m, (10, 4)).round(2)
            budgets = {FIRST: (d, div.tolist(), (div + rng.uniform(0, 2, (10, 4))).round(2).tolist())}
            if several:
                tutor = rng.uniform(1.0, 9.0, (10, 4)).round(2)
                budgets["tutor"] = (6.0, tutor.tolist(), None)
            lam = {FIRST: 0.5, **({"tutor": 0.25} if several else {})} if method == "lagrangian" else None
            fake_run(root, f"{method}_s{seed}", method=method, seed=seed, budgets=budgets, correct=correct,
                     families=fams if families else None, lam=lam)


def rendered(root: Path, text: str) -> str:
    return text.replace(str(root), "<root>")


def test_a_single_constraint_report_is_unchanged(tmp_path, capsys):
    # the report written by the code before several constraints existed (6880f96), on the same runs
    sweep(tmp_path, several=False)
    report_main([str(tmp_path)])
    out = capsys.readouterr().out
    assert rendered(tmp_path, (tmp_path / "report.md").read_text()) == (GOLDEN / "report.md").read_text()
    assert rendered(tmp_path, (tmp_path / "report.html").read_text()) == (GOLDEN / "report.html").read_text()
    assert rendered(tmp_path, out) == (GOLDEN / "stdout.txt").read_text()
    assert not (tmp_path / "allocation.png").exists()
