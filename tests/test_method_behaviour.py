"""What defines each method, checked by training tiny models through the one loop."""

import json

import pytest
import torch
from helpers import tiny_cfg
from transformers import AutoModelForCausalLM

from cdistill.models.budget_input import attach, has_budget_input
from cdistill.models.loading import build_components
from cdistill.objectives import constraint_stats
from cdistill.rollout.budget_sampler import BudgetTracking, generate_with_budget
from cdistill.rollout.sampling import generate, generation_config
from cdistill.scoring import score_rollout
from cdistill.train import train


def run(tmp_path, cache, *overrides):
    cfg = tiny_cfg(tmp_path, *overrides, cache=cache)
    out = tmp_path / "run"
    out.mkdir(parents=True)
    summary = train(cfg, out)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"time_step"' in line]
    evals = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    return cfg, out, summary, steps, evals


@pytest.mark.parametrize("controller", ["dual_ascent", "pid"])
def test_lagrangian_multiplier_rises_while_over_budget(tmp_path, cache, controller):
    # a budget no completion meets: the measured C stays above d, so lambda climbs every step (for PID
    # through its integral term; the proportional and derivative terms may move either way)
    _, _, summary, steps, _ = run(tmp_path, cache, "method=lagrangian", f"method.controller={controller}",
                                  "method.lr=0.5", "method.ema_decay=0", "constraint.threshold=1e-3",
                                  "method.pid.kp=0", "method.pid.kd=0", "method.pid.ki=0.1",
                                  "optim.steps=4", "eval.at_start=false")
    lams = [s["lambda"] for s in steps]
    assert all(s["divergence_mean"] > 1e-3 for s in steps)
    assert lams[0] > 0 and all(b > a for a, b in zip(lams, lams[1:], strict=False))
    assert summary["method_state"]["lam"] == lams[-1]


def test_lagrangian_multiplier_decays_by_dual_ascent_to_zero_under_budget(tmp_path, cache):
    # λ ← max(0, λ + lr (mean C − d)) on each step's batch: from 2, about −0.5 a step, clipped at 0
    _, _, _, steps, _ = run(tmp_path, cache, "method=lagrangian", "method.init=2.0", "method.lr=5e-4",
                            "method.ema_decay=0", "constraint.threshold=1000", "optim.steps=5", "eval.at_start=false")
    lam, want = 2.0, []
    for s in steps:
        lam = max(0.0, lam + 5e-4 * (s["divergence_mean"] - 1000))
        want.append(lam)
    assert [s["lambda"] for s in steps] == pytest.approx(want)
    assert want[0] < 2.0 and want[-1] == 0.0


def test_opd_lowers_the_divergence_to_the_teacher(tmp_path, cache):
    _, _, _, _, evals = run(tmp_path, cache, "method=opd", "optim.lr=3e-3", "optim.steps=12",
                            "rollout.prompts_per_step=4", "eval.n_problems=12", "eval.samples=4")
    start, end = evals[0]["sampled_kl_per_token"], evals[-1]["sampled_kl_per_token"]
    assert end < 0.8 * start


def test_opd_full_vocabulary_estimator_lowers_the_divergence_too(tmp_path, cache):
    _, _, _, _, evals = run(tmp_path, cache, "method=opd", "method.estimator=full", "optim.lr=3e-3",
                            "optim.steps=12", "rollout.prompts_per_step=4", "eval.n_problems=12", "eval.samples=4")
    assert evals[-1]["sampled_kl_per_token"] < 0.8 * evals[0]["sampled_kl_per_token"]


def test_sft_lowers_the_loss_on_its_data(tmp_path, cache):
    _, _, _, steps, _ = run(tmp_path, cache, "method=sft", "optim.lr=1e-2", "optim.steps=12", "eval.at_start=false")
    losses = [s["loss"] for s in steps]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_seqkd_generates_the_teachers_solutions_once_and_reuses_them(tmp_path, cache):
    seqkd_cache = tmp_path / "seqkd-cache"
    cfg, _, _, steps, _ = run(tmp_path, cache, "method=seqkd", f"paths.cache={seqkd_cache}", "eval.at_start=false")
    files = list(seqkd_cache.glob("seqkd-*.jsonl"))
    assert len(files) == 1
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    n = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt * cfg.optim.steps
    assert len({r["prompt"] for r in rows}) == len(rows) <= n
    # they are the teacher's greedy solutions
    parts = build_components(cfg)
    gen = generation_config(parts.tokenizer, cfg.rollout.max_new_tokens, 1.0, 1.0, True)
    greedy = generate(parts.teacher, parts.tokenizer, [r["prompt"] for r in rows[:3]], 1, gen)
    assert greedy.texts == [r["completion"] for r in rows[:3]]
    # a second run over the same prompts generates nothing new
    before = files[0].read_text()
    second = tmp_path / "second"
    second.mkdir()
    run(second, cache, "method=seqkd", f"paths.cache={seqkd_cache}", "eval.at_start=false")
    assert files[0].read_text() == before


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0.0), (1.0, 1.0)])
def test_gkd_batch_source_follows_the_on_policy_fraction(tmp_path, cache, fraction, expected):
    _, _, _, steps, _ = run(tmp_path, cache, "method=gkd", f"method.on_policy_fraction={fraction}",
                            "optim.steps=3", "eval.at_start=false")
    assert [s["on_policy"] for s in steps] == [expected] * 3
    assert all(s["loss"] >= 0 for s in steps)  # a divergence: never negative


def test_gkd_mixes_sources_and_brings_the_students_samples_closer_to_the_teacher(tmp_path, cache):
    _, _, _, steps, evals = run(tmp_path, cache, "method=gkd", "method.off_policy=reference", "optim.lr=3e-3",
                                "optim.steps=12", "rollout.prompts_per_step=4", "eval.n_problems=12",
                                "eval.samples=4")
    assert 0 < sum(s["on_policy"] for s in steps) < len(steps)
    assert evals[-1]["sampled_kl_per_token"] < evals[0]["sampled_kl_per_token"]


def test_weakest_link_sets_its_constraint_and_refuses_another(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, "method=weakest_link", cache=cache)
    assert (cfg.constraint.cost, cfg.constraint.kind) == ("teacher_nll", "prefix_mean")
    _, _, summary, steps, _ = run(tmp_path, cache, "method=weakest_link", "constraint.threshold=3",
                                  "eval.at_start=false")
    assert summary["cost"] == "teacher_nll" and all(s["grad_norm"] > 0 for s in steps)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ValueError, match="weakest_link needs constraint.cost=teacher_nll"):
        run(bad, cache, "method=weakest_link", "constraint.cost=logratio")


def test_saute_student_changes_its_behaviour_when_the_budget_input_changes(tmp_path, cache):
    # a low budget: completions exhaust it, so z_t varies and the budget projection gets a gradient
    cfg, out, _, _, _ = run(tmp_path, cache, "method=saute", "constraint.threshold=2", "optim.lr=1e-2",
                            "optim.steps=4", "eval.at_start=false")
    parts = build_components(cfg, student_path=str(out / "student"))
    assert has_budget_input(parts.student)
    assert parts.student.budget_input.proj.weight.abs().sum() > 0
    ids = parts.tokenizer(["Question: 3 + 4?\nAnswer:\n"], return_tensors="pt").input_ids
    from cdistill.models.budget_input import embed

    with torch.no_grad():
        full = parts.student(inputs_embeds=embed(parts.student, ids, torch.ones(ids.shape))).logits
        empty = parts.student(inputs_embeds=embed(parts.student, ids, -torch.ones(ids.shape))).logits
    assert not torch.allclose(full, empty)
    # the HF checkpoint alone is the plain student (the budget input is a separate file)
    plain = AutoModelForCausalLM.from_pretrained(out / "student")
    assert not hasattr(plain, "budget_input") and (out / "student" / "budget_input.safetensors").is_file()


@pytest.mark.parametrize("kind", ["sum", "mean", "prefix_mean"])
def test_saute_sampling_feeds_the_budget_that_scoring_recomputes(tmp_path, cache, kind):
    cfg = tiny_cfg(tmp_path, f"constraint.kind={kind}", "constraint.threshold=0.7", cache=cache)
    parts = build_components(cfg)
    attach(parts.student)
    torch.nn.init.normal_(parts.student.budget_input.proj.weight)  # a student that does react to z
    track = BudgetTracking(parts.teacher, "logratio", kind, 0.7, parts.vocab, 1.0)
    gen = generation_config(parts.tokenizer, 10, 1.0, 1.0, False)
    prompts = [parts.task.prompt(p) for p in parts.task.test[:3]]
    rollout = generate_with_budget(parts.student, parts.tokenizer, prompts, 2, gen, track)
    scored = score_rollout(rollout, [p for p in parts.task.test[:3] for _ in range(2)], parts, cfg)
    stats = constraint_stats(scored.costs, scored.mask, 0.7, kind)
    fed = rollout.seq.budget[:, rollout.seq.prompt_len:]
    want = (0.7 - stats.running) / 0.7
    m = scored.mask
    torch.testing.assert_close(fed[m], want[m], atol=1e-4, rtol=1e-4)


def test_saute_greedy_sampling_with_an_untrained_budget_input_equals_hf_generate(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, cache=cache)
    parts = build_components(cfg)
    prompts = [parts.task.prompt(p) for p in parts.task.test[:4]]
    gen = generation_config(parts.tokenizer, 10, 1.0, 1.0, True)
    plain = generate(parts.student, parts.tokenizer, prompts, 1, gen)
    attach(parts.student)  # zero-initialised: the augmented student is the plain one
    track = BudgetTracking(parts.teacher, "logratio", "sum", 5.0, parts.vocab, 1.0)
    tracked = generate(parts.student, parts.tokenizer, prompts, 1, gen, budget=track)
    assert tracked.texts == plain.texts


def test_with_nothing_to_gain_from_the_task_only_cmdps_budget_moves_the_student_towards_the_teacher(tmp_path, cache):
    # The tiny student is never right, so grpo's advantages are all zero and its weights cannot move; cmdp's
    # budget (most of the start student's samples break it) is then the whole signal: the fast sibling of the
    # full-size comparison below.
    results = {}
    for name in ("grpo", "cmdp"):
        extra = ["method.informative=1"] if name == "cmdp" else []  # the paper's reward: -c_t after a violation
        cfg, out, summary, steps, evals = run(tmp_path / name, cache, f"method={name}", "constraint.threshold=1",
                                              "optim.lr=1e-2", "optim.steps=5", *extra)
        assert all(s["reward"] == 0 for s in steps)
        results[name] = [e["divergence_mean"] for e in evals]
    assert results["grpo"][-1] == results["grpo"][0]
    # measured on the split by computation: 1.28 → 0.49 in 5 steps (0.96 after 3; 1.52 → 0.77 in 3 on the old split)
    assert results["cmdp"][-1] < 0.7 * results["cmdp"][0]


@pytest.mark.slow
def test_cmdp_with_a_large_penalty_keeps_the_divergence_below_grpos_on_the_embedded_default(tmp_path_factory):
    # The embedded default at full size (built once here, ~2 min on 2 cores), a budget nearly every start sample
    # breaks (d = 3 against a start mean C(y) of ~34), 40 steps, compared on the training batches of the last 10
    # steps (1280 samples each) and the final evaluation. Measured on the split by computation (issue 15): mean
    # C(y) over the last 10 steps 14.04 (cmdp) against 19.47 (grpo), 13.25 against 15.59 at the final evaluation.
    # Satisfaction at d = 3 is not asserted: it went the other way there (0.381 for cmdp, 0.440 for grpo), the
    # budget lowering the mean divergence rather than the share of samples under a budget this tight. (On the
    # earlier, leaky split: 8.88 against 13.52, 8.73 against 15.69, satisfied 0.563 against 0.552.)
    from helpers import CONF
    from hydra import compose, initialize_config_dir

    cache = tmp_path_factory.mktemp("default-cache")
    results = {}
    for name, extra in (("grpo", []), ("cmdp", ["method.penalty=10", "method.informative=1"])):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", [f"method={name}", *extra, "optim.steps=40", "optim.lr=5e-5",
                                     "constraint.threshold=3", "eval.at_start=false", "eval.n_problems=50",
                                     "logging.wandb.enabled=false", "logging.progress=false", f"paths.cache={cache}",
                                     "device=cpu"])
        out = tmp_path_factory.mktemp(name)
        summary = train(cfg, out)
        steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"time_step"' in line]
        last = steps[-10:]
        results[name] = {"divergence": sum(s["divergence_mean"] for s in last) / 10,
                         "final_divergence": summary["divergence_mean"]}
    cmdp, grpo = results["cmdp"], results["grpo"]
    assert cmdp["divergence"] < 0.8 * grpo["divergence"]
    assert cmdp["final_divergence"] < 0.92 * grpo["final_divergence"]
