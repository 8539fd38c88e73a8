"""``cdistill report`` over runs with several constraints (one budget per teacher): the per-constraint table, the
divergence allocation per family, the multipliers of each constraint; and single-constraint reports unchanged."""

import json
from pathlib import Path

import numpy as np
import pytest
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


FAMILIES = ["sells", "sells", "other", "other"]


def two_budgets(teacher_d=10.0, tutor_d=5.0):
    """Four problems × 2 samples. "teacher": C(y) = 4 everywhere, a prefix at 12 on problems 0 and 2; "tutor":
    C(y) = 2 but 8 on problem 2. So, overall: satisfied@teacher 1, never exceeded@teacher 0.5, satisfied@tutor and
    never exceeded@tutor 0.75, jointly satisfied 0.75 and never exceeded 0.5 (problems 1 and 3)."""
    teacher = [[4.0, 4.0]] * 4
    teacher_peak = [[12.0, 12.0], [4.0, 4.0], [12.0, 12.0], [4.0, 4.0]]
    tutor = [[2.0, 2.0], [2.0, 2.0], [8.0, 8.0], [2.0, 2.0]]
    return {FIRST: (teacher_d, teacher, teacher_peak), "tutor": (tutor_d, tutor, None)}


def table_rows(md: str, section: str) -> list[list[str]]:
    """The data rows of the first table after heading ``section``."""
    body = md.split(section, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept open to be read (``plt.close`` is where each one is finished)."""
    import cdistill.eval.plots as plots

    real = plots._pyplot()
    kept = {}

    class Keeping:
        def __getattr__(self, name):
            return getattr(real, name)

        def close(self, fig):
            kept[fig._suptitle.get_text() if fig._suptitle else ""] = fig

    monkeypatch.setattr(plots, "_pyplot", lambda: Keeping())
    yield kept
    for fig in kept.values():
        real.close(fig)


def test_each_constraint_is_read_on_its_own_beside_the_joint_reading(tmp_path, capsys):
    fake_run(tmp_path, "c", method="cmdp", seed=0, budgets=two_budgets(), correct=[[1, 0]] * 4)
    report_main([str(tmp_path)])
    out = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    (row,) = table_rows(md, "## Per constraint")
    assert row[2] == "teacher: sum of logratio <= 10; tutor: sum of logratio <= 5"
    means = [c.split(" [")[0] for c in row[4:]]
    # satisfied, never exceeded, mean C(y) @teacher; the same @tutor; jointly satisfied, never exceeded
    assert means == ["1.000", "0.500", "4.00", "0.750", "0.750", "3.50", "0.750", "0.500"]
    # one run's rate over 4 problems: Wilson's interval, as the main table gives it
    assert row[7] == "0.750 [0.301, 0.954]" and row[6] == "4.00 [4.00, 4.00]"
    (main,) = [r for r in table_rows(md, "# cdistill report") if r[0] == "cmdp"]
    assert main[7:9] == row[10:12]  # the main table's satisfied / never exceeded are the joint ones
    assert "move the first constraint's (`teacher`) budget only" in md
    assert "| satisfied @tutor |" in out  # printed too
    assert "Divergence allocation" not in md and not (tmp_path / "allocation.png").exists()  # no families


def test_reading_at_another_budget_moves_the_first_constraint_only():
    from cdistill.eval.replicates import per_problem

    sample = {"correct": True, "divergence": 3.0, "peak": 6.0, "satisfied": False, "never_exceeded": False,
              "budgets": {FIRST: {"divergence": 3.0, "peak": 6.0, "satisfied": True, "never_exceeded": True},
                          "tutor": {"divergence": 9.0, "peak": 9.0, "satisfied": False, "never_exceeded": False}}}
    ok_tutor = {**sample, "satisfied": True, "never_exceeded": True,
                "budgets": {**sample["budgets"], "tutor": {**sample["budgets"]["tutor"], "satisfied": True,
                                                           "never_exceeded": True}}}
    record = {"samples": [sample, ok_tutor]}
    assert per_problem(record, "satisfaction_rate@teacher", 5.0) == 1.0  # C(y) 3 <= 5
    assert per_problem(record, "never_exceeded_rate@teacher", 5.0) == 0.0  # its peak 6 > 5
    assert per_problem(record, "satisfaction_rate@tutor", 100.0) == 0.5  # its own budget, whatever d is read
    # jointly, at d = 5 for the teacher: the first sample still fails the tutor's budget
    assert per_problem(record, "satisfaction_rate", 5.0) == 0.5
    assert per_problem(record, "success_rate", 2.0) == 0.0  # C(y) 3 > 2
    assert per_problem(record, "divergence_mean@tutor", None) == 9.0
    with pytest.raises(KeyError):
        per_problem(record, "accuracy_sampled@tutor", None)


def test_a_method_read_at_another_budget_is_still_held_to_the_other_constraints(tmp_path, capsys):
    # soft_penalty's C(y) against the teacher (4) is within cmdp's d = 5, but its tutor's C(y) is 8 on a quarter of
    # the problems: jointly it is satisfied on 0.75 of them at d = 5, cmdp on all
    fake_run(tmp_path, "s", method="soft_penalty", seed=0, budgets=two_budgets(teacher_d=10.0), correct=[[1, 1]] * 4)
    ok = {FIRST: (5.0, [[1.0, 1.0]] * 4, None), "tutor": (5.0, [[1.0, 1.0]] * 4, None)}
    fake_run(tmp_path, "c", method="cmdp", seed=0, budgets=ok, correct=[[1, 1]] * 4)
    report_main([str(tmp_path)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| cmdp d=5 | soft_penalty |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "5" and cells[5].startswith("+0.250 [")  # Δ satisfied at end: 1 − 0.75, not 1 − 1


def test_runs_are_compared_only_under_the_same_further_constraints(tmp_path):
    from cdistill.eval.report import pairs

    fake_run(tmp_path, "c5", method="cmdp", seed=0, budgets=two_budgets(tutor_d=5.0), correct=[[1, 0]] * 4)
    fake_run(tmp_path, "l5", method="lagrangian", seed=0, budgets=two_budgets(tutor_d=5.0), correct=[[1, 0]] * 4)
    fake_run(tmp_path, "l6", method="lagrangian", seed=1, budgets=two_budgets(tutor_d=6.0), correct=[[1, 0]] * 4)
    single = {FIRST: two_budgets()[FIRST]}
    fake_run(tmp_path, "one", method="lagrangian", seed=2, budgets=single, correct=[[1, 0]] * 4)
    groups = group_runs(finished_runs(tmp_path))
    assert len(groups) == 4
    found = {(a.runs[0].path.name, b.runs[0].path.name) for a, b, _ in pairs(groups)}
    assert found == {("c5", "l5")}


def test_allocation_per_family_and_constraint_with_its_figure(tmp_path, figures):
    fake_run(tmp_path, "c", method="cmdp", seed=0, budgets=two_budgets(), correct=[[1, 0]] * 4, families=FAMILIES)
    report_main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    rows = {r[3]: r[4:] for r in table_rows(md, "## Divergence allocation per family")}
    assert list(rows) == ["other", "sells"]
    # problems, mean C(y) @teacher, satisfied @teacher, mean C(y) @tutor, satisfied @tutor, satisfied (all)
    assert [c.split(" [")[0] for c in rows["sells"]] == ["2", "4.00", "1.000", "2.00", "1.000", "1.000"]
    assert [c.split(" [")[0] for c in rows["other"]] == ["2", "4.00", "1.000", "5.00", "0.500", "0.500"]
    assert "![divergence allocation per family](allocation.png)" in md
    assert (tmp_path / "allocation.png").stat().st_size > 0
    fig = next(f for title, f in figures.items() if title.startswith("divergence allocation"))
    teacher, tutor = fig.axes[:2]
    assert teacher.get_title() == "constraint 'teacher'" and tutor.get_title() == "constraint 'tutor'"
    assert [p.get_height() for p in tutor.patches] == [5.0, 2.0]  # other, sells
    assert [p.get_height() for p in teacher.patches] == [4.0, 4.0]

    def budgets(ax):
        return [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"]

    assert budgets(teacher) == [10.0] and budgets(tutor) == [5.0]


def test_every_multiplier_of_a_lagrangian_is_drawn(tmp_path, figures):
    fake_run(tmp_path, "l", method="lagrangian", seed=0, budgets=two_budgets(), correct=[[1, 0]] * 4,
             lam={FIRST: 0.5, "tutor": 0.25})
    report_main([str(tmp_path)])
    fig = next(f for title, f in figures.items() if title.startswith("training curves"))
    ax = next(a for a in fig.axes if a.get_title() == "λ (lagrangian)")
    lines = {line.get_linestyle(): line.get_ydata() for line in ax.lines}
    assert set(lines) == {"-", "--"}  # λ@teacher solid, λ@tutor dashed, and λ not drawn again
    assert lines["--"][-1] == pytest.approx(lines["-"][-1] / 2)  # the tutor's multiplier grows half as fast
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["λ@teacher", "λ@tutor"]


def test_a_single_constraint_row_beside_several_shows_its_one_constraint_as_the_first(tmp_path):
    fake_run(tmp_path, "two", method="cmdp", seed=0, budgets=two_budgets(), correct=[[1, 0]] * 4)
    fake_run(tmp_path, "one", method="lagrangian", seed=0, budgets={FIRST: two_budgets()[FIRST]},
             correct=[[1, 0]] * 4)
    report_main([str(tmp_path)])
    rows = {r[0]: r[4:] for r in table_rows((tmp_path / "report.md").read_text(), "## Per constraint")}
    # one constraint: its satisfied, never exceeded and C(y) under the first name, nothing under the tutor's
    assert [c.split(" [")[0] for c in rows["lagrangian"]] == ["1.000", "0.500", "4.00", "-", "-", "-", "1.000",
                                                              "0.500"]


def test_runs_without_per_problem_records_show_the_summaries_numbers(tmp_path):
    run = fake_run(tmp_path, "c", method="cmdp", seed=0, budgets=two_budgets(), correct=[[1, 0]] * 4)
    (run / "eval_samples.jsonl").unlink()
    report_main([str(tmp_path)])
    (row,) = table_rows((tmp_path / "report.md").read_text(), "## Per constraint")
    assert row[7] == "0.750 (no interval)" and row[9] == "3.50 (no interval)"


def test_constraints_left_out_and_an_empty_mapping_are_the_same_configuration(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, f"s{seed}", method="cmdp", seed=seed, budgets={FIRST: two_budgets()[FIRST]},
                 correct=[[1, 0]] * 4)
    config = tmp_path / "s0" / "config.yaml"
    tree = yaml.safe_load(config.read_text())
    assert tree.pop("constraints") == {}
    config.write_text(yaml.safe_dump(tree))  # as a run written before several constraints existed
    (group,) = group_runs(finished_runs(tmp_path))
    assert group.seeds == [0, 1] and group.label == ""


def test_a_further_teacher_that_differs_is_another_constraint_but_not_where_it_is_served(tmp_path):
    from cdistill.eval.report import pairs

    for name, vocab, url in (("a", 400, "http://x"), ("b", 400, "http://y"), ("c", 512, "http://x")):
        run = fake_run(tmp_path, name, method="cmdp" if name == "a" else "lagrangian", seed=0,
                       budgets=two_budgets(), correct=[[1, 0]] * 4)
        tree = yaml.safe_load((run / "config.yaml").read_text())
        tree["model"]["teachers"] = {"t_tutor": {"name_or_path": "embedded:teacher", "vocab_size": vocab,
                                                 "server": {"base_url": url}}}
        (run / "config.yaml").write_text(yaml.safe_dump(tree))
    groups = group_runs(finished_runs(tmp_path))
    found = {(a.runs[0].path.name, b.runs[0].path.name) for a, b, _ in pairs(groups)}
    assert found == {("a", "b")}  # c's tutor is another model: its C(y)@tutor measures something else


def test_a_declared_comparison_under_different_further_constraints_is_refused_in_one_line(tmp_path, capsys):
    fake_run(tmp_path, "c", method="cmdp", seed=0, budgets=two_budgets(tutor_d=5.0), correct=[[1, 0]] * 4)
    fake_run(tmp_path, "l", method="lagrangian", seed=0, budgets=two_budgets(tutor_d=6.0), correct=[[1, 0]] * 4)
    (tmp_path / "verdicts.yaml").write_text("comparisons: [[cmdp, lagrangian]]\nprimary: satisfaction_rate\n")
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held to different further constraints" in err[0]
    assert "tutor: sum of logratio <= 6" in err[0]
    assert not (tmp_path / "report.md").exists()
