"""The vLLM rollout backend on CPU: the same sampler code, driven by a fake engine (``fake_engine.py``)."""

import json

import pytest
import torch
from fake_engine import FakeEngine
from helpers import tiny_cfg
from transformers import AutoModelForCausalLM

from cdistill.models.loading import build_components, resolve_model_path
from cdistill.objectives import clipped_policy_loss, truncated_importance_weights
from cdistill.rollout import engines
from cdistill.rollout.engines import EngineSampler, Sample, SamplingSpec, hf_weights
from cdistill.rollout.sampling import generate, generation_config
from cdistill.train import train


class ScriptedEngine:
    """Returns given completions: to compare layouts with the HF backend token for token."""

    def __init__(self, samples):
        self.samples = samples

    def load_weights(self, weights):
        list(weights)

    def generate(self, prompts, spec):
        return self.samples


def use_fake_engine(monkeypatch, dtype=torch.bfloat16):
    made = []

    def make(model_path, options, seed):
        made.append(FakeEngine(model_path, dtype))
        return made[-1]

    monkeypatch.setattr(engines, "vllm_available", lambda: True)
    monkeypatch.setattr(engines, "make_vllm_engine", make)
    return made


def test_sampling_spec_reads_the_hf_backends_settings(tmp_path, cache):
    parts = build_components(tiny_cfg(tmp_path, cache=cache))
    tok = parts.tokenizer
    spec = SamplingSpec.from_generation_config(generation_config(tok, 17, 0.7, 0.9, False), 4)
    assert spec == SamplingSpec(n=4, max_tokens=17, temperature=0.7, top_p=0.9, greedy=False,
                                eos_token_id=tok.eos_token_id)
    greedy = SamplingSpec.from_generation_config(generation_config(tok, 5, 0.7, 0.9, True), 1)
    assert greedy.greedy and greedy.temperature == 1.0 and greedy.top_p == 1.0


@pytest.mark.parametrize("greedy", [True, False])
def test_engine_rollouts_are_laid_out_exactly_like_the_hf_backends(tmp_path, cache, greedy):
    parts = build_components(tiny_cfg(tmp_path, cache=cache))
    tok, n = parts.tokenizer, 1 if greedy else 3
    prompts = [parts.task.prompt(p) for p in parts.task.train[:3]]
    gen = generation_config(tok, 12, 1.0, 1.0, greedy)
    # the tiny student rarely stops by itself: a bias on EOS gives completions that end and some that are cut
    gen.sequence_bias = {(tok.eos_token_id,): 1.0 if greedy else 2.0}
    hf = generate(parts.student, tok, prompts, n, gen)
    # the engine returns exactly HF's tokens: up to and including the first EOS, nothing after
    rows = []
    for ids, m in zip(hf.seq.completion_ids, hf.seq.completion_mask, strict=True):
        rows.append(Sample(ids[m].tolist(), [-0.5] * int(m.sum())))
    assert any(r.token_ids[-1] == tok.eos_token_id for r in rows)
    assert greedy or any(r.token_ids[-1] != tok.eos_token_id for r in rows)
    engine = ScriptedEngine([rows[i * n : (i + 1) * n] for i in range(len(prompts))])
    got = EngineSampler(engine, tok, "cpu").sample(parts.student, prompts, n, gen)
    t = int(hf.seq.completion_mask.sum(1).max())
    assert torch.equal(got.seq.completion_mask, hf.seq.completion_mask[:, :t])
    assert torch.equal(got.seq.completion_ids[got.seq.completion_mask], hf.seq.completion_ids[hf.seq.completion_mask])
    p = hf.seq.prompt_len
    for name in ("input_ids", "attention_mask", "position_ids"):
        a, b = getattr(got.seq, name), getattr(hf.seq, name)
        assert torch.equal(a[:, :p], b[:, :p]), name
    assert torch.equal(got.seq.attention_mask[:, p:].bool(), got.seq.completion_mask)
    assert got.texts == hf.texts and got.group_size == n
    assert torch.equal(got.sampler_logp, -0.5 * got.seq.completion_mask.float())


def test_an_engine_returning_the_wrong_number_of_samples_is_an_error(tmp_path, cache):
    parts = build_components(tiny_cfg(tmp_path, cache=cache))
    prompts = [parts.task.prompt(p) for p in parts.task.train[:2]]
    engine = ScriptedEngine([[Sample([5], [-1.0])]])
    with pytest.raises(RuntimeError, match="returned"):
        EngineSampler(engine, parts.tokenizer, "cpu").sample(parts.student, prompts, 1,
                                                            generation_config(parts.tokenizer, 4, 1.0, 1.0, False))


def test_weights_reach_the_engine_before_the_first_rollout_and_after_every_optimiser_step(tmp_path, cache,
                                                                                         monkeypatch):
    made = use_fake_engine(monkeypatch, torch.float32)
    cfg = tiny_cfg(tmp_path, "rollout.backend=vllm", "optim.steps=3", "checkpoint.every=1", "checkpoint.keep=5",
                   "optim.lr=1e-2", "eval.at_start=false", cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    start = build_components(cfg).student.state_dict()
    train(cfg, run)
    (engine,) = made
    assert engine.pushes == 3 and len(engine.at_generate) == 3  # evaluation samples with HF, not the engine
    # what the engine sampled with at step k: the student as it stood after step k − 1
    expected = [start] + [AutoModelForCausalLM.from_pretrained(run / "checkpoints" / f"step-{k:06d}" / "student")
                          .state_dict() for k in (1, 2)]
    for seen, want in zip(engine.at_generate, expected, strict=True):
        for name, value in want.items():
            assert torch.equal(seen[name], value), name
    assert engine.specs[0].n == cfg.rollout.samples_per_prompt and not engine.specs[0].greedy
    records = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert records
    # same weights, same precision: the engine's log-probs are the trainer's up to float rounding
    assert all(r["sampler_logp_abs_diff"] < 1e-4 for r in records)


def test_a_bfloat16_engine_differs_from_the_trainer_and_the_correction_sees_it(tmp_path, cache, monkeypatch):
    use_fake_engine(monkeypatch, torch.bfloat16)
    cfg = tiny_cfg(tmp_path, "rollout.backend=vllm", "method=lagrangian", "eval.at_start=false", cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    records = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert records
    assert all(r["sampler_logp_abs_diff"] > 1e-4 for r in records)
    assert all(r["sampler_ratio_max"] > 1.0 for r in records)
    assert summary["steps"] == 2 and (run / "student" / "config.json").is_file()


def test_engine_weights_of_a_lora_student_are_the_merged_base_weights_under_hf_names(tmp_path, cache):
    lora = "model.student.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"
    cfg = tiny_cfg(tmp_path, lora, cache=cache)
    student = build_components(cfg).student
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: merged weights differ from the base
    x = torch.tensor([[3, 4, 5, 6]])
    before = student(x).logits
    pushed = dict((k, v.clone()) for k, v in hf_weights(student))
    assert torch.equal(student(x).logits, before)  # unmerged again afterwards
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.student.name_or_path, cfg))
    assert set(pushed) == set(dict(plain.named_parameters()))
    plain.load_state_dict(pushed, strict=False)
    assert torch.allclose(plain(x).logits, before, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.student.name_or_path, cfg))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(pushed[q], base.state_dict()[q])


def test_truncated_importance_weights_against_loops():
    torch.manual_seed(0)
    b, t, cap = 4, 6, 2.0
    logp, slp = -torch.rand(b, t) * 3, -torch.rand(b, t) * 3
    mask = torch.tensor([[i < n for i in range(t)] for n in (6, 3, 1, 0)])
    tok = truncated_importance_weights(logp, slp, mask, cap, "token")
    seq = truncated_importance_weights(logp, slp, mask, cap, "sequence")
    for i in range(b):
        ratio = 1.0
        for j in range(t):
            if mask[i, j]:
                ratio *= float(torch.exp(logp[i, j] - slp[i, j]))
        for j in range(t):
            want_tok = min(float(torch.exp(logp[i, j] - slp[i, j])), cap) if mask[i, j] else 0.0
            want_seq = min(ratio, cap) if mask[i, j] else 0.0
            assert abs(float(tok[i, j]) - want_tok) < 1e-5
            assert abs(float(seq[i, j]) - want_seq) < 1e-5
    assert torch.equal(truncated_importance_weights(logp, slp, mask, cap, "none"), mask.float())
    huge = truncated_importance_weights(torch.zeros(1, 2), torch.full((1, 2), -1e4), torch.ones(1, 2), cap, "sequence")
    assert torch.equal(huge, torch.full((1, 2), cap))  # no overflow to inf
    unknown = slp.clone()
    unknown[0, 1] = float("nan")
    w = truncated_importance_weights(logp, unknown, mask, cap, "token")
    assert float(w[0, 1]) == 1.0 and torch.equal(w[0, 2:], tok[0, 2:])  # no engine log-prob: no correction
    with pytest.raises(ValueError, match="importance correction"):
        truncated_importance_weights(logp, slp, mask, cap, "bogus")


def test_importance_weights_scale_each_tokens_policy_gradient():
    torch.manual_seed(0)
    logp = (-torch.rand(2, 3)).requires_grad_()
    adv, mask = torch.randn(2, 3), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    w = torch.tensor([[0.5, 2.0, 7.0], [1.0, 0.0, 1.5]])
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, weights=w)
    loss.backward()
    # one inner epoch (ratio 1): d loss / d logp_t = −w_t A_t / n_tokens at valid positions
    assert torch.allclose(logp.grad, -(w * adv * mask) / mask.sum())
