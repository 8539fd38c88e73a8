"""``cdistill report`` over a directory of finished runs."""

import json
import os

import pytest
import yaml

from cdistill.eval.replicates import finished_runs, group_runs
from cdistill.eval.report import report_main


def fake_run(root, method, d, acc, div, lam=None):
    run = root / f"{method}_d{d}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- constraint.threshold={d}\n")
    summary = {"method": method, "threshold": d, "accuracy_sampled": acc, "accuracy_greedy": acc + 0.1,
               "divergence_mean": div, "divergence_p90": 2 * div, "satisfaction_rate": 0.5, "success_rate": 0.3,
               "steps": 3, "train_seconds": 1.0, "start_accuracy_sampled": 0.2}
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": s, "reward": acc, "divergence_mean": div, "satisfaction_rate": 0.5,
             **({"lambda": lam * s} if lam is not None else {})} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def test_report_writes_table_plots_html_and_the_command_of_every_run(tmp_path, capsys):
    for method, lam in (("cmdp", None), ("lagrangian", 0.5)):
        for d, acc in ((2, 0.4), (8, 0.6)):
            fake_run(tmp_path, method, d, acc, div=d / 2, lam=lam)
    report_main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| cmdp | - | d = 2 |" in out and "| lagrangian | - | d = 8 |" in out and "0.600 (no interval)" in out
    for name in ("report.md", "report.html", "pareto.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "report.md").read_text()
    assert "`cdistill train method=lagrangian constraint.threshold=8`" in md
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert sorted(r.summary["method"] for r in finished_runs(tmp_path)) == ["cmdp", "cmdp", "lagrangian", "lagrangian"]


def test_report_skips_a_corrupt_summary_and_fails_on_nothing(tmp_path):
    fake_run(tmp_path, "grpo", 4, 0.5, 1.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    assert len(finished_runs(tmp_path)) == 1
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "empty_missing")])
    assert e.value.code == 2


def test_pareto_plots_c_of_y_only_when_every_run_measures_it_the_same_way():
    from cdistill.eval.plots import pareto_axis

    same = [{"cost": "logratio", "kind": "sum"}, {"cost": "logratio", "kind": "sum"}]
    mixed = [*same, {"cost": "teacher_nll", "kind": "prefix_mean"}]
    assert pareto_axis(same)[0] == "divergence_mean"
    assert pareto_axis(mixed)[0] == "sampled_kl_per_token"


def replicate(root, name, *, method="soft_penalty", seed=0, penalty=0.1, d=10.0, correct, divergence, peak=None,
              logging_mode="offline", families=None, start=None, teacher=None, flaw=None):
    """A finished run as cdistill writes it: resolved config, summary and per-problem evaluation records
    (``correct[i]`` and ``divergence[i]``: problem i's sampled completions; ``families[i]``: problem i's family),
    and with ``start`` the start evaluation's per-family report in ``evals.jsonl`` (``teacher``: the teacher's, in the
    summary); ``flaw``: the embedded teacher's (``+exp=flawed_teacher``: "sells")."""
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": seed, "method": {"name": method, "penalty": penalty},
              "logging": {"wandb": {"mode": logging_mode}},
              "constraint": {"cost": "logratio", "kind": "sum", "threshold": d},
              "model": {"teacher": {"name_or_path": "embedded:teacher", "dtype": "float32", "shard": True},
                        "embedded": {"seed": 0, "teacher": {"steps": 500, "flaw": flaw}, "student": {"steps": 600}}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    peak = peak or divergence
    records = [{"question": f"q{i}", "gold": "1", "greedy": "", "greedy_correct": bool(c[0]), "greedy_answer": "1",
                "samples": [{"text": "", "answer": "1", "correct": bool(x), "divergence": v, "peak": pk,
                             "satisfied": v <= d, "never_exceeded": pk <= d}
                            for x, v, pk in zip(c, dv, pp, strict=True)]}
               for i, (c, dv, pp) in enumerate(zip(correct, divergence, peak, strict=True))]
    for r, fam in zip(records, families or [], strict=False):
        r["family"] = fam
    (run / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if start is not None:
        (run / "evals.jsonl").write_text(json.dumps({"step": 0, "families": start}) + "\n"
                                         + json.dumps({"step": 3, "families": {}}) + "\n")
    flat = [x for c in correct for x in c]
    summary = {"method": method, "threshold": d, "cost": "logratio", "kind": "sum",
               "trains_on_budget": method not in ("soft_penalty", "grpo"),
               "accuracy_sampled": sum(flat) / len(flat), "divergence_mean": 1.0, "steps": 3,
               **({"teacher_families": teacher} if teacher else {})}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_runs_that_differ_only_in_seed_and_resources_are_one_group_labelled_by_what_differs(tmp_path):
    ok, div = [[1, 0]] * 3, [[1.0, 2.0]] * 3
    replicate(tmp_path, "a0", seed=0, correct=ok, divergence=div)
    replicate(tmp_path, "a1", seed=1, correct=ok, divergence=div, logging_mode="disabled")  # a resource key
    replicate(tmp_path, "b0", seed=0, penalty=1.0, correct=ok, divergence=div)
    replicate(tmp_path, "c0", seed=0, method="cmdp", correct=ok, divergence=div)
    groups = group_runs(finished_runs(tmp_path))
    assert [(g.method, g.label, g.seeds) for g in groups] == [
        ("cmdp", "", [0]), ("soft_penalty", "method.penalty=0.1", [0, 1]), ("soft_penalty", "method.penalty=1.0", [0])]


def test_a_group_reports_the_mean_over_seeds_and_problems_with_an_interval_that_contains_it(tmp_path, capsys):
    # seed 0 answers 2 of 4 samples right on each problem, seed 1 all of them: mean (0.5 + 1) / 2 = 0.75
    replicate(tmp_path, "s0", seed=0, correct=[[1, 0, 1, 0]] * 5, divergence=[[1.0] * 4] * 5)
    replicate(tmp_path, "s1", seed=1, correct=[[1, 1, 1, 1]] * 5, divergence=[[3.0] * 4] * 5)
    report_main([str(tmp_path)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| soft_penalty"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "0,1"
    def numbers(text):
        return tuple(float(x) for x in text.replace("[", "").replace("]", "").replace(",", "").split())

    # every problem is alike, so the interval is over the two seeds alone: seed means 1 and 3 of C(y), a standard
    # error of 1 and Student's t at one degree of freedom (12.706): two seeds say little
    assert numbers(cells[6]) == (2.0, round(2 - 12.7062, 2), round(2 + 12.7062, 2))
    # the same interval on sampled accuracy (seed means 0.5 and 1: 0.75 ± 12.706 · 0.25) is clipped to what a rate
    # can be
    assert numbers(cells[4]) == (0.75, 0.0, 1.0)


def test_a_declared_comparison_names_the_better_method_and_the_rest_is_exploratory_without_verdicts(tmp_path, capsys):
    n = 30
    for seed in (0, 1):
        # cmdp right on every problem, C(y) = 4; the fixed penalty wrong everywhere, C(y) = 6
        replicate(tmp_path, f"cmdp{seed}", method="cmdp", d=5.0, seed=seed, correct=[[1, 1]] * n,
                  divergence=[[4.0, 4.0]] * n)
        replicate(tmp_path, f"soft{seed}", d=10.0, seed=seed, correct=[[0, 0]] * n, divergence=[[6.0, 6.0]] * n)
    report_main([str(tmp_path)])  # nothing declared: no verdict
    out = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    assert "better" not in md and "## Exploratory (not corrected for multiplicity; no verdicts)" in md
    assert "No comparison was declared" in md
    row = next(line for line in out.splitlines() if line.startswith("| cmdp d=5 | soft_penalty |"))  # no d: ignored
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "5" and cells[3] == "paired by seed (0,1)"
    # every difference is +1 (a rate with no estimated variance): Newcombe's interval from the two Wilson intervals
    # over 30 problems, [1 − sqrt(2) · 0.1135, 1], not a zero-width certainty
    assert cells[4] == "+1.000 [+0.839, +1.000]"
    # at cmdp's d = 5 the fixed penalty's C(y) = 6 is never satisfied (at its own d = 10 it always is)
    assert cells[5] == "+1.000 [+0.839, +1.000]"
    assert cells[7] == "-2.00 [-2.00, -2.00]"  # C(y) is not a rate: equal differences, a zero-width interval
    assert "- cmdp d=5 vs soft_penalty (no fixed penalty was as little divergent" in md  # matched, exploratory
    assert "### The hard budget against the best fixed penalty, at matched divergence (exploratory" in md

    (tmp_path / "verdicts.yaml").write_text("comparisons: [[cmdp, soft_penalty]]\nprimary: accuracy_sampled\n"
                                           "alpha: 0.05\n")
    report_main([str(tmp_path)])
    capsys.readouterr()
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Declared verdicts (Holm-corrected, family-wise alpha)")[1].split("## Exploratory")[0]
    row = next(line for line in section.splitlines() if line.startswith("| cmdp d=5 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["cmdp d=5", "soft_penalty", "5", "paired by seed (0,1)", "+1.000", "[+0.839, +1.000]"]
    assert cells[-1] == "**cmdp d=5 better**" and cells[7] == cells[8] == "<0.0001"  # one comparison: Holm = raw
    assert "better" not in md.split("## Exploratory")[1]


def test_no_detectable_difference_when_two_methods_answer_alike(tmp_path, capsys):
    rows = [[1, 0], [0, 1], [1, 1], [0, 0]] * 5
    for seed in (0, 1):
        replicate(tmp_path, f"c{seed}", method="cmdp", seed=seed, correct=rows, divergence=[[1.0, 1.0]] * 20)
        replicate(tmp_path, f"s{seed}", seed=seed, correct=rows[::-1], divergence=[[1.0, 1.0]] * 20)
    (tmp_path / "verdicts.yaml").write_text("comparisons: [[cmdp, soft_penalty]]\nprimary: accuracy_sampled\n")
    report_main([str(tmp_path)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| cmdp d=10 | soft_penalty"))
    assert row.split("|")[-2].strip() == "**no detectable difference**"


def test_the_never_exceeded_reading_differs_from_the_end_reading_with_signed_costs(tmp_path, capsys):
    # C(y) = 3 <= 5 at the end, but a prefix reached 7: satisfied at the end, not never exceeded
    replicate(tmp_path, "c", method="cmdp", d=5.0, correct=[[1]] * 4, divergence=[[3.0]] * 4, peak=[[7.0]] * 4)
    report_main([str(tmp_path)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| cmdp"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7].startswith("1.000") and cells[8].startswith("0.000")  # satisfied at end, never exceeded
    assert cells[9].startswith("1.000") and cells[10].startswith("0.000")  # success under each reading


def test_budget_trained_methods_are_compared_only_at_the_same_budget(tmp_path):
    from cdistill.eval.report import pairs

    row = {"correct": [[1]] * 3, "divergence": [[1.0]] * 3}
    replicate(tmp_path, "c5", method="cmdp", d=5.0, **row)
    replicate(tmp_path, "c10", method="cmdp", d=10.0, **row)
    replicate(tmp_path, "l10", method="lagrangian", d=10.0, **row)
    replicate(tmp_path, "s", method="soft_penalty", d=10.0, **row)
    found = {(a.name, b.name, d) for a, b, d in pairs(group_runs(finished_runs(tmp_path)))}
    assert found == {("cmdp d=5", "soft_penalty", 5.0), ("cmdp d=10", "soft_penalty", 10.0),
                     ("cmdp d=10", "lagrangian d=10", 10.0), ("lagrangian d=10", "soft_penalty", 10.0)}


def test_a_run_repeating_a_seed_is_left_out_with_a_warning_not_counted_twice(tmp_path, capsys):
    row = {"correct": [[1, 0]] * 3, "divergence": [[1.0, 1.0]] * 3}
    replicate(tmp_path, "old", seed=0, **row)
    replicate(tmp_path, "new", seed=0, **row)
    replicate(tmp_path, "other", seed=1, **row)
    os.utime(tmp_path / "old" / "summary.json", (1, 1))  # the older of the two seed-0 runs
    (group,) = group_runs(finished_runs(tmp_path))
    assert sorted(r.path.name for r in group.runs) == ["new", "other"]
    assert "old repeats seed 0" in capsys.readouterr().err


def test_report_shows_per_family_accuracy_gain_and_divergence_with_intervals(tmp_path, capsys):
    # four problems of family "sells", six "other"; two seeds. Start accuracy (evals.jsonl step 0) 0.25 on "sells"
    # and 0.5 on "other" for both seeds.
    families = ["sells"] * 4 + ["other"] * 6
    start = {"sells": {"accuracy_sampled": 0.25, "divergence_mean": 3.0},
             "other": {"accuracy_sampled": 0.5, "divergence_mean": 1.0}}
    for seed, sells_ok in ((0, [1, 1]), (1, [1, 0])):
        teacher = {"sells": {"accuracy_sampled": 0.0}, "other": {"accuracy_sampled": 0.7 + 0.1 * seed}}
        replicate(tmp_path, f"s{seed}", seed=seed, families=families, start=start, teacher=teacher,
                  correct=[sells_ok] * 4 + [[1, 0]] * 6, divergence=[[12.0, 14.0]] * 4 + [[2.0, 2.0]] * 6)
    report_main([str(tmp_path)])
    out = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    assert "## Per family: where the divergence is spent" in md and "![per family" in md
    assert (tmp_path / "families.png").stat().st_size > 0
    section = md.split("## Per family")[1]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
             if line.startswith("| soft_penalty | - | sum of logratio, read at d = 10 | 0,1 |")]  # its constraint named
    rows = {c[4]: c[:2] + c[3:] for c in cells}
    assert set(rows) == {"sells", "other"}  # natural order, one row per family
    sells, other = rows["sells"], rows["other"]
    assert sells[4:7] == ["4", "0.000", "0.250"] and other[4:7] == ["6", "0.750", "0.500"]  # teacher: seeds' mean
    # sells: seed 0 right on every sample, seed 1 on half: mean 0.75, gain 0.75 - 0.25 = 0.5; other: no gain
    assert sells[7].startswith("0.750 [") and sells[8].startswith("+0.500 [") and sells[9] == "3.00"
    assert sells[10] == "13.00 [13.00, 13.00]"
    # a rate equal on every problem and seed: Wilson's interval over the family's problems (6 "other", 4 "sells"),
    # not a zero-width one; the gain is a difference, not a rate
    assert other[7] == "0.500 [0.188, 0.812]" and other[8] == "+0.000 [+0.000, +0.000]" and other[10].startswith("2.00")
    assert sells[11] == "0.000 [0.000, 0.490]" and other[11] == "1.000 [0.610, 1.000]"  # satisfied: C(y) <= 10
    assert "| sells |" in out  # printed too


def test_no_family_section_without_families(tmp_path):
    replicate(tmp_path, "r", correct=[[1, 0]] * 3, divergence=[[1.0, 1.0]] * 3)
    report_main([str(tmp_path)])
    assert "Per family" not in (tmp_path / "report.md").read_text() and not (tmp_path / "families.png").exists()


def test_replicates_that_tag_their_problems_differently_get_no_family_rows_and_a_line_says_so(tmp_path, capsys):
    # task.family_field does not change what a run measures (a resource key), so these two seeds are one group;
    # their families disagree (one run evaluated none): no per-family row may mix them, and nothing may crash
    replicate(tmp_path, "s0", seed=0, families=["sells", "other"], correct=[[1, 0]] * 2, divergence=[[1.0, 1.0]] * 2)
    replicate(tmp_path, "s1", seed=1, correct=[[1, 1]] * 2, divergence=[[1.0, 1.0]] * 2)
    report_main([str(tmp_path)])
    assert "Per family" not in (tmp_path / "report.md").read_text()
    assert "its runs tag their problems with different families (or some with none)" in capsys.readouterr().err
