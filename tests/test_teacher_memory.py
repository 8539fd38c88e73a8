"""A teacher that does not fit beside the student: bitsandbytes 8-bit / 4-bit weights (model.teacher.quantization).
bitsandbytes runs LLM.int8 on the CPU too, so the real quantized path is tested here."""

import pytest
import torch
from helpers import tiny_cfg

from cdistill.models import completion_forward
from cdistill.models.loading import build_components
from cdistill.objectives import ScoringSpec
from cdistill.rollout.sampling import generate, generation_config
from cdistill.train import train

bnb = pytest.importorskip("bitsandbytes")


def test_an_8bit_teacher_has_int8_layers_a_float_head_and_scores_like_the_full_one(tmp_path, cache):
    full = build_components(tiny_cfg(tmp_path, cache=cache))
    quant = build_components(tiny_cfg(tmp_path, "model.teacher.quantization=8bit", cache=cache))
    layers = quant.teacher.get_decoder().layers
    assert isinstance(layers[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    assert quant.teacher.get_output_embeddings().weight.dtype == torch.float32  # chunked scoring reads it
    prompts = [full.task.prompt(p) for p in full.task.train[:4]]
    roll = generate(full.student, full.tokenizer, prompts, 2, generation_config(full.tokenizer, 10, 1.0, 1.0, False))
    spec = ScoringSpec(temperature=1.0, chunk=64, vocab=full.vocab)
    a = completion_forward(full.teacher, roll.seq, spec).logp
    b = completion_forward(quant.teacher, roll.seq, spec).logp
    m = roll.seq.completion_mask
    assert not torch.equal(a[m], b[m])  # really another set of weights...
    assert (a[m] - b[m]).abs().max() < 0.01  # ...that LLM.int8 keeps close (measured 8e-4 nats)


def test_training_runs_with_an_8bit_teacher(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, "model.teacher.quantization=8bit", "eval.at_start=false", cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    assert summary["steps"] == 2 and (run / "student" / "model.safetensors").is_file()
