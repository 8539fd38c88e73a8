"""A teacher that does not fit beside the student: bitsandbytes 8-bit / 4-bit weights (model.teacher.quantization).
bitsandbytes runs LLM.int8 on the CPU too, so the real quantized path is tested here."""

import pytest
import torch
from helpers import tiny_cfg

from cdistill.models import score
from cdistill.rollout import generate, generation_config
from cdistill.runtime import build_components
from cdistill.train import train

bnb = pytest.importorskip("bitsandbytes")


def test_an_8bit_teacher_has_int8_layers_a_float_head_and_scores_like_the_full_one(tmp_path, cache):
    full = build_components(tiny_cfg(tmp_path, cache=cache))
    quant = build_components(tiny_cfg(tmp_path, "model.teacher.quantization=8bit", cache=cache))
    layers = quant.teacher.get_decoder().layers
    assert isinstance(layers[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    assert quant.teacher.get_output_embeddings().weight.dtype == torch.float32  # the chunked scorer reads it
    prompts = [full.task.prompt(p) for p in full.task.train[:4]]
    roll = generate(full.student, full.tokenizer, prompts, 2, generation_config(full.tokenizer, 10, 1.0, 1.0, False))
    a, _, _ = score(full.teacher, roll.seq, 1.0, 64, full.vocab)
    b, _, _ = score(quant.teacher, roll.seq, 1.0, 64, full.vocab)
    m = roll.seq.completion_mask
    assert not torch.equal(a[m], b[m])  # really another set of weights...
    assert (a[m] - b[m]).abs().max() < 0.01  # ...that LLM.int8 keeps close (measured 8e-4 nats)


def test_training_runs_with_an_8bit_teacher(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, "model.teacher.quantization=8bit", "eval.at_start=false", cache=cache)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    assert summary["steps"] == 2 and (run / "student" / "model.safetensors").is_file()
