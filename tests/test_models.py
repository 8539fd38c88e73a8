"""Scoring forward passes: the shared-prompt forward equals the plain one, values and gradients."""

import pytest
import torch
from omegaconf import OmegaConf

from cdistill.models import Sequences, completion_forward
from cdistill.models.budget_input import attach
from cdistill.models.embedded import build_tokenizer, tiny_llama
from cdistill.objectives import ScoringSpec
from cdistill.objectives.masks import completion_mask


@pytest.fixture(scope="module")
def model_and_batch():
    tok = build_tokenizer(["Question: 12 + 3 apples\nAnswer:\n15 #### 15"] * 20, 300)
    size = OmegaConf.create({"hidden": 16, "intermediate": 32, "layers": 2, "heads": 2, "max_positions": 64})
    model = tiny_llama(tok, size, 0)
    tok.padding_side = "left"
    enc = tok(["Question: 1 + 2", "Q: 3"], return_tensors="pt", padding=True)  # ragged: left padding
    g = 3
    completion = torch.randint(3, len(tok), (2 * g, 6))
    completion[1, 2] = tok.eos_token_id  # a completion that ends early: padding after its EOS
    mask = completion_mask(completion, tok.eos_token_id)
    seq = Sequences.build(enc.input_ids.repeat_interleave(g, 0), enc.attention_mask.repeat_interleave(g, 0),
                          completion, mask)
    return model, seq, g


def test_shared_prompt_forward_matches_the_full_forward(model_and_batch):
    model, seq, g = model_and_batch
    full = completion_forward(model, seq, ScoringSpec(0.9, 4))
    shared = completion_forward(model, seq, ScoringSpec(0.9, 4, group_size=g))
    m = seq.completion_mask
    torch.testing.assert_close(shared.logp[m], full.logp[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.hidden[m], full.hidden[m], rtol=1e-5, atol=1e-5)


def test_shared_prompt_forward_gives_the_same_gradients(model_and_batch):
    model, seq, g = model_and_batch
    grads = []
    for group in (1, g):
        model.zero_grad()
        logp = completion_forward(model, seq, ScoringSpec(1.0, 4, group_size=group)).logp
        (logp * seq.completion_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5)


def test_shared_prompt_forward_feeds_a_saute_student_its_recorded_budget(model_and_batch):
    model, seq, g = model_and_batch
    attach(model)
    torch.nn.init.normal_(model.budget_input.proj.weight)
    budget = torch.cat([torch.ones(seq.input_ids.shape[0], seq.prompt_len), torch.rand(seq.input_ids.shape[0], 6)], 1)
    seq = Sequences(**{**vars(seq), "budget": budget})
    full = completion_forward(model, seq, ScoringSpec(1.0, 4))
    shared = completion_forward(model, seq, ScoringSpec(1.0, 4, group_size=g))
    del model.budget_input
    m = seq.completion_mask
    torch.testing.assert_close(shared.logp[m], full.logp[m], rtol=1e-5, atol=1e-5)
