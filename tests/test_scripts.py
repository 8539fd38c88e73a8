"""The developer scripts run: the GPU smoke check at toy size on the CPU, the benchmark's plan."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_dry_run_trains_toy_qwen2_models_and_prints_its_table(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--dry-run", "--models",
                        str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    row = [line for line in r.stdout.splitlines() if line.startswith("| hf |")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    step, generate, score, update = (float(c) for c in cells[1:5])
    assert step > 0 and generate > 0 and score > 0 and update > 0
    assert float(cells[5]) > 0  # generated tokens per second
    assert "vllm: skipped (CPU dry run)" in r.stdout


def test_bench_dry_run_prints_the_plan_for_every_contender():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_step.py"), "--dry-run"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("cdistill_cmdp", "cdistill_cmdp_token_kl", "cdistill_soft_penalty", "trl_grpo", "trl_distillation"):
        assert name in r.stdout


def test_compare_script_runs_every_method_over_its_grid_and_reports_the_matched_divergence_verdict(tmp_path):
    import os

    from helpers import TINY

    sweep = tmp_path / "compare"
    env = {**os.environ, "BUDGETS": "5", "PENALTIES": "0.1,1", "SEEDS": "0,1", "SWEEP_DIR": str(sweep)}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "compare.sh"), *TINY, f"paths.cache={tmp_path / 'cache'}"],
                       capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list(sweep.glob("*/summary.json"))) == 8  # cmdp, lagrangian at d=5 and two penalties, 2 seeds each
    md = (sweep / "report.md").read_text()
    assert "8 runs in 4 groups" in r.stdout
    assert "## Exploratory (not corrected for multiplicity; no verdicts)" in md
    assert "## The hard budget against the best fixed penalty" in md
    assert "comparison finished in" in r.stdout


def test_soak_script_samples_resident_memory_against_steps_and_prints_its_table(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--steps", "40", "--warmup", "5",
                        "--interval", "0.05", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| point | step | seconds | RSS MiB |" in r.stdout and "from warm-up to the end:" in r.stdout
    summary = json.loads((tmp_path / "run" / "soak.json").read_text())
    assert summary["steps"] == 40 and summary["rss_end"] > 50  # a Python process with torch: tens of MiB at least


def test_topk_bias_script_measures_the_coarsened_divergences_below_the_exact_ones(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "topk_bias.py"), "--tiny", "--n-prompts", "4",
                        "--samples", "2", "--ks", "1,5", "--cache", str(tmp_path / "cache"), "--out",
                        str(tmp_path / "bias.md")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {}  # the per-token table's (the first of two)
    for line in r.stdout.splitlines():
        if line.startswith(("| 1 |", "| 5 |")):
            rows.setdefault(line.split("|")[1].strip(), [c.strip() for c in line.strip("|").split("|")])
    assert set(rows) == {"1", "5"}
    kl_exact, kl_approx = float(rows["1"][3]), float(rows["1"][4])
    assert 0 < kl_approx <= kl_exact  # a lower bound, strictly informative
    assert float(rows["5"][4]) >= kl_approx  # more of the teacher known: closer to the exact value
    assert "Lower bound held" in (tmp_path / "bias.md").read_text()


def test_served_teacher_bench_dry_run_plans_the_same_training_for_both_teachers(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_served_teacher.py"), "--dry-run", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in r.stdout.splitlines() if ": " in line}
    local, served = lines["local"].split(), lines["server"].split()
    assert "model.teacher.backend=local" in local and "model.teacher.backend=server" in served
    same = [a for a in local if a.startswith(("optim.", "rollout.", "eval.", "seed="))]
    assert same and all(a in served for a in same)  # identical settings apart from where the teacher runs
    assert "llama_cpp.server" in lines["llama-cpp-python server"]


def test_absorbing_reward_script_measures_every_setting_on_training_batches_and_prints_its_tables(tmp_path):
    import os

    trial = tmp_path / "study" / "trial0"  # a tuning trial's records, as the study writes them (no config.yaml)
    (trial / ".hydra").mkdir(parents=True)
    (trial / ".hydra" / "overrides.yaml").write_text("- method.informative=0.5\n- method.penalty_on=every\n"
                                                     "- optim.grad_clip=1.0\n- constraint.threshold=5\n")
    (trial / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "entropy": 1.0 - s / 10, "grad_norm": 3.0 / s})
                                                 + "\n" for s in (1, 2, 3, 4)))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "absorbing_reward.py"), "--tiny", "--batches", "2",
                        "--budgets", "2,0.5", "--train-steps", "1", "--greedy-prompts", "4", "--trials",
                        str(trial.parent), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ar.md")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {}  # (d, setting) -> cells of the first table
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("2", "0.5"):
            rows[cells[0], cells[1]] = cells
    settings = {s for _, s in rows}
    assert {"cmdp w=0 first", "cmdp w=1 first", "cmdp w=0.25 every", "soft_penalty 0.1", "grpo"} <= settings
    assert len(rows) == 2 * len(settings) == 20
    task, cost = rows["2", "grpo"][5].split(" / ")
    assert cost in ("0.00", "nan")  # grpo's advantage is all task reward (nan: no reward in any batch)
    task, cost = (float(x) for x in rows["0.5", "cmdp w=1 first"][5].split(" / "))
    assert 0 <= task <= 1 and 0 < cost <= 1
    absorbed = float(rows["0.5", "cmdp w=1 first"][2])
    assert 0 < absorbed <= 1 and absorbed >= float(rows["2", "cmdp w=1 first"][2])  # a tighter budget absorbs more
    assert float(rows["0.5", "cmdp w=1 every"][7].split()[0]) > 0  # a gradient norm before clipping
    trained = [line for line in r.stdout.splitlines() if line.startswith("| cmdp w=1 first (d = 2)")]
    assert len(trained) == 1 and "→" in trained[0]  # the short training's row
    trial_row = [line for line in r.stdout.splitlines() if line.startswith("| trial0 |")]
    assert len(trial_row) == 1 and "| 0.5 | every |" in trial_row[0] and "0.90 → 0.60" in trial_row[0]
    assert "cmdp's absorbing reward" in (tmp_path / "ar.md").read_text()
