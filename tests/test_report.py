"""``cdistill report`` over a directory of finished runs."""

import json

import pytest

from cdistill.eval.report import finished_runs, report_main


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
    assert "| cmdp | 2 |" in out and "| lagrangian | 8 |" in out and "0.600" in out
    for name in ("report.md", "report.html", "pareto.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "report.md").read_text()
    assert "`cdistill train method=lagrangian constraint.threshold=8`" in md
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert [s["method"] for _, s in finished_runs(tmp_path)] == ["cmdp", "cmdp", "lagrangian", "lagrangian"]


def test_report_skips_a_corrupt_summary_and_fails_on_nothing(tmp_path):
    fake_run(tmp_path, "grpo", 4, 0.5, 1.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    assert len(finished_runs(tmp_path)) == 1
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "empty_missing")])
    assert e.value.code == 2


def test_pareto_plots_c_of_y_only_when_every_run_measures_it_the_same_way():
    from cdistill.eval.report import pareto_axis

    same = [{"cost": "logratio", "kind": "sum"}, {"cost": "logratio", "kind": "sum"}]
    mixed = [*same, {"cost": "teacher_nll", "kind": "prefix_mean"}]
    assert pareto_axis(same)[0] == "divergence_mean"
    assert pareto_axis(mixed)[0] == "sampled_kl_per_token"
