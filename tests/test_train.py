"""The runner end to end at tiny sizes: every method trains, outputs land, eval agrees, cache works."""

import json
import math

import pytest
import torch
from helpers import tiny_cfg
from transformers import AutoModelForCausalLM, AutoTokenizer

from cdistill.eval.evaluate import evaluate
from cdistill.methods import METHODS
from cdistill.models import embedded
from cdistill.models.loading import build_components
from cdistill.train import train


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_a_few_steps_and_writes_its_outputs(tmp_path, cache, method):
    cfg = tiny_cfg(tmp_path, f"method={method}", "constraint.threshold=5", cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "time_step" in s]
    assert [s["step"] for s in train_steps] == [1, 2]
    for s in train_steps:
        # a batch of teacher or reference completions is not the student's: its reward and satisfaction are
        # logged apart, so that no curve presents them as the student's
        prefix = "" if "reward" in s else "offpolicy/"
        assert (prefix == "offpolicy/") == (method in ("sft", "seqkd") or (method == "gkd" and not s["on_policy"]))
        for key in ("reward", "divergence_mean", "divergence_p90", "satisfaction_rate", "entropy", "length_mean"):
            assert s[prefix + key] is not None and math.isfinite(s[prefix + key]), key
        for key in ("time_generate", "time_score", "time_update"):
            assert s[key] is not None and math.isfinite(s[key]), key
    if method == "lagrangian":
        assert all("lambda" in s for s in train_steps)
        assert summary["method_state"]["lam"] == train_steps[-1]["lambda"]
    assert (run / "config.yaml").is_file() and (run / "eval.json").is_file()
    assert len((run / "eval_samples.jsonl").read_text().splitlines()) == cfg.eval.n_problems
    assert summary["steps"] == 2 and 0.0 <= summary["satisfaction_rate"] <= 1.0


@pytest.mark.parametrize(("cost", "kind"), [("token_kl", "sum"), ("teacher_nll", "prefix_mean"), ("logratio", "mean")])
def test_cmdp_trains_with_every_cost_and_kind(tmp_path, cache, cost, kind):
    # a low budget so that completions violate and the informative reward / pathwise term are exercised
    cfg = tiny_cfg(tmp_path, "method=cmdp", f"constraint.cost={cost}", f"constraint.kind={kind}",
                   "constraint.threshold=0.5", "method.informative=1", "eval.at_start=false", "scoring.chunk=7",
                   cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert len(steps) == 2 and all(math.isfinite(s["loss"]) for s in steps)
    if cost == "token_kl":  # violations everywhere: the direct KL gradient must reach the student
        assert all(s["absorbed_rate"] > 0 and s["grad_norm"] > 0 for s in steps)
    assert summary["cost"] == cost and summary["kind"] == kind


def test_training_changes_the_student_weights(tmp_path, cache):
    # the tiny student is never right, so the cost term is what moves it
    cfg = tiny_cfg(tmp_path, "method=soft_penalty", "method.penalty=1", "optim.lr=0.01", "eval.at_start=false",
                   cache=cache)
    parts = build_components(cfg)
    before = {k: v.clone() for k, v in parts.student.state_dict().items()}
    run = tmp_path / "run"
    run.mkdir()
    train(cfg, run)
    after = AutoModelForCausalLM.from_pretrained(run / "student").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_saved_student_reloads_with_plain_transformers_and_generates(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    train(cfg, run)
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    tok = AutoTokenizer.from_pretrained(run / "student")
    ids = tok("Question: Ava has 3 apples. How many apples does Ava have now?\nAnswer:\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.input_ids.shape[1]


def test_evaluation_is_reproducible_and_its_rates_agree_with_its_samples(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, "eval.n_problems=6", "eval.samples=3", "constraint.threshold=4", cache=cache)
    parts = build_components(cfg)
    report, records = evaluate(parts, cfg, with_samples=True)
    again, _ = evaluate(parts, cfg, with_samples=True)
    assert report == again
    samples = [s for r in records for s in r["samples"]]
    assert len(samples) == 18
    assert report["satisfaction_rate"] == pytest.approx(sum(s["satisfied"] for s in samples) / 18)
    assert all(s["satisfied"] == (s["divergence"] <= 4) for s in samples)
    assert report["success_rate"] == pytest.approx(sum(s["satisfied"] and s["correct"] for s in samples) / 18)
    assert report["accuracy_greedy"] == pytest.approx(sum(r["greedy_correct"] for r in records) / 6)


def test_embedded_cache_is_reused_and_rebuilt_when_its_recipe_changes(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    cache = tmp_path / "cache"
    first = embedded.ensure_built(cfg.model.embedded, cfg.task, cache, "student")
    calls = []
    real = embedded.tiny_llama

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(embedded, "tiny_llama", counting)
    assert embedded.ensure_built(cfg.model.embedded, cfg.task, cache, "student") == first
    assert calls == []
    cfg.model.embedded.student.steps = 11
    second = embedded.ensure_built(cfg.model.embedded, cfg.task, cache, "student")
    assert second != first and calls == [1]
    assert not list(cache.glob(".building-*"))


def test_a_run_depends_on_its_seed_alone_not_on_what_ran_before_in_the_process(tmp_path, cache):
    # a multirun runs its jobs in one process; the second job must equal the same job run first
    cfg = tiny_cfg(tmp_path, "method=cmdp", "constraint.threshold=3", cache=cache)
    results = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        run.mkdir()
        train(cfg, run)
        results.append([line for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line])
    strip = [[{k: v for k, v in json.loads(r).items() if not k.startswith("time_")} for r in rs] for rs in results]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("method", ["cmdp", "gkd"])
def test_sharing_the_student_forward_between_scoring_and_update_changes_nothing(tmp_path, cache, method):
    weights = []
    for reuse in (True, False):
        out = tmp_path / str(reuse)
        out.mkdir()
        cfg = tiny_cfg(tmp_path, f"method={method}", f"scoring.reuse_student_pass={reuse}", "optim.lr=1e-2",
                       "constraint.threshold=1", "eval.at_start=false", "optim.micro_batch=64", cache=cache)
        train(cfg, out)
        weights.append(AutoModelForCausalLM.from_pretrained(out / "student").state_dict())
    # equal up to float rounding (scoring runs the prompt once per group, the shared pass too but over other
    # micro-batches), which Adam's per-weight normalisation can lift to ~1e-5 on a weight whose gradient is ~0;
    # a step moves weights by ~1e-2 here
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-5, atol=2e-5)


LORA = "model.student.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"


def test_a_lora_student_trains_its_adapter_only_and_is_saved_merged(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, LORA, "optim.lr=1e-2", "constraint.threshold=1", "eval.at_start=false",
                   "optim.micro_batch=64", cache=cache)
    base = build_components(cfg).student  # the configured student with a fresh adapter
    base_weights = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.clone()
                    for k, v in base.state_dict().items() if "lora_" not in k}
    run = tmp_path / "run"
    run.mkdir()
    train(cfg, run)
    merged = AutoModelForCausalLM.from_pretrained(run / "student").state_dict()  # plain HF, no peft needed
    changed = {k for k in merged if not torch.equal(merged[k], base_weights[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


def test_a_lora_run_resumes_from_its_adapter_checkpoint_to_the_same_weights(tmp_path, cache):
    common = [LORA, "optim.lr=1e-2", "constraint.threshold=1", "eval.at_start=false", "optim.micro_batch=64",
              "optim.steps=3", "checkpoint.every=1", "checkpoint.keep=5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    train(tiny_cfg(tmp_path, *common, cache=cache), straight)
    ckpt = straight / "checkpoints" / "step-000001"
    assert (ckpt / "student" / "adapter_config.json").is_file()
    resumed.mkdir()
    train(tiny_cfg(tmp_path, *common, f"resume={ckpt}", cache=cache), resumed)
    a = AutoModelForCausalLM.from_pretrained(straight / "student").state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed / "student").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, cache):
    weights = []
    for ckpt in (False, True):
        out = tmp_path / str(ckpt)
        out.mkdir()
        cfg = tiny_cfg(tmp_path, f"model.student.gradient_checkpointing={ckpt}", "optim.lr=1e-2",
                       "constraint.threshold=1", "eval.at_start=false", cache=cache)
        layer = build_components(cfg).student.get_decoder().layers[0]
        assert layer.gradient_checkpointing == ckpt  # the option reaches the decoder layers
        train(cfg, out)
        weights.append(AutoModelForCausalLM.from_pretrained(out / "student").state_dict())
    # equal up to float rounding (scoring runs the prompt once per group, the shared pass too but over other
    # micro-batches), which Adam's per-weight normalisation can lift to ~1e-5 on a weight whose gradient is ~0;
    # a step moves weights by ~1e-2 here
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-5, atol=2e-5)
