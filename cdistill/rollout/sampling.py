"""Sampling completions with Hugging Face ``generate``."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig

from cdistill.models.budget_input import has_budget_input
from cdistill.models.forward import Sequences
from cdistill.objectives.masks import completion_mask
from cdistill.rollout.budget_sampler import generate_with_budget
from cdistill.rollout.types import Rollout  # and from here, for the modules that import it from sampling


def generation_config(tokenizer, max_new_tokens: int, temperature: float, top_p: float, greedy: bool,
                      n_samples: int = 1):
    """Explicit sampling settings: a model's own generation_config (Qwen ships top_k=20, for example)
    must not silently change the distribution we compute log-probs for."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    common = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, repetition_penalty=1.0,
                  num_return_sequences=n_samples)
    if greedy:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **common)


# no_grad, not inference_mode: a sharded (FSDP) student all-gathers its parameters into buffers that the next
# training forward reuses in place, which tensors made under inference_mode forbid
@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], n_samples: int, gen: GenerationConfig, device="cpu",
             add_special_tokens: bool = True, budget=None) -> Rollout:
    """``n_samples`` completions per prompt, grouped consecutively (rows g·n … g·n + n − 1 share prompt g).

    A budget-conditioned student (``saute``) cannot use ``generate()``: its next input depends on the
    teacher's view of the token just sampled. ``budget`` (a ``rollout.budget_sampler.BudgetTracking``) then
    drives ``generate_with_budget`` instead.
    """
    if getattr(model, "served", False):  # a teacher behind an inference server (cdistill.models.served)
        return model.rollout(tokenizer, prompts, n_samples, gen, device, add_special_tokens)
    if has_budget_input(model):
        if budget is None:
            raise ValueError("a budget-conditioned student needs the teacher to track its budget while sampling")
        return generate_with_budget(model, tokenizer, prompts, n_samples, gen, budget, device, add_special_tokens)
    gen = copy.copy(gen)
    gen.num_return_sequences = n_samples
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=enc.input_ids, attention_mask=enc.attention_mask, generation_config=gen
    )
    model.train(was_training)
    p = enc.input_ids.shape[1]
    completion = out[:, p:]
    if completion.shape[1] == 0:  # generate() may stop before emitting anything
        completion = torch.full((out.shape[0], 1), tokenizer.eos_token_id, device=out.device)
    mask = completion_mask(completion, tokenizer.eos_token_id)
    prompt_ids = enc.input_ids.repeat_interleave(n_samples, dim=0)
    prompt_mask = enc.attention_mask.repeat_interleave(n_samples, dim=0)
    texts = tokenizer.batch_decode(completion.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True)
    return Rollout(Sequences.build(prompt_ids, prompt_mask, completion, mask), texts, n_samples)
