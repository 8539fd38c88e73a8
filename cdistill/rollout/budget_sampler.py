"""Sampling a ``saute`` student, whose input includes the remaining budget z_t / d: token by token, the
teacher run beside it to update the budget after every token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopPLogitsWarper

from cdistill.models.budget_input import embed
from cdistill.models.forward import Sequences, cache_of, with_cache
from cdistill.objectives.constraints import running_step
from cdistill.objectives.costs import COSTS
from cdistill.objectives.masks import completion_mask
from cdistill.rollout.types import Rollout


@dataclass
class BudgetTracking:
    """What sampling a ``saute`` student needs besides the student: the teacher and the constraint."""

    teacher: torch.nn.Module
    cost: str  # constraint.cost
    kind: str  # constraint.kind
    threshold: float
    vocab: int
    temperature: float  # the student's log-probs in the cost are taken at the rollout temperature


def next_token(logits: torch.Tensor, gen: GenerationConfig, top_p) -> torch.Tensor:
    """generate()'s rule: temperature, then top-p, then a draw; the argmax when not sampling."""
    if not gen.do_sample:
        return logits.argmax(-1)
    scaled = logits / gen.temperature
    if top_p is not None:
        scaled = top_p(None, scaled)
    return torch.multinomial(torch.softmax(scaled, -1), 1).squeeze(1)


@torch.inference_mode()
def generate_with_budget(student, tokenizer, prompts, n_samples: int, gen: GenerationConfig, track: BudgetTracking,
                         device="cpu", add_special_tokens: bool = True) -> Rollout:
    """Token-by-token sampling of a budget-conditioned student, the teacher run beside it (both with KV
    caches) to update z_t = d − C_t after every token. Same sampling rule as ``generate`` (temperature,
    top-p, no top-k; greedy when ``gen.do_sample`` is false); the budget fed at every input position is
    returned in the sequences, so that scoring and the update see the states that were sampled from."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)
    ids = enc.input_ids.repeat_interleave(n_samples, dim=0)
    attn = enc.attention_mask.repeat_interleave(n_samples, dim=0)
    b, d, v = ids.shape[0], float(track.threshold), track.vocab
    cost = COSTS[track.cost]
    prompt_budget = torch.ones(ids.shape, device=device)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    was_training = student.training
    student.eval()
    s_out = student(inputs_embeds=embed(student, ids, prompt_budget), attention_mask=attn, position_ids=pos,
                    use_cache=True, logits_to_keep=1)
    t_out = track.teacher(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    top_p = TopPLogitsWarper(gen.top_p) if gen.do_sample and gen.top_p < 1.0 else None
    total = torch.zeros(b, device=device)
    count = torch.zeros(b, device=device)
    running = torch.full((b,), float("-inf"), device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    tokens, budgets = [], []
    for _ in range(gen.max_new_tokens):
        s_logits = s_out.logits[:, -1, :v].float()
        t_logits = t_out.logits[:, -1, :v].float()
        nxt = next_token(s_logits, gen, top_p).masked_fill(finished, tokenizer.pad_token_id)
        c = cost.at_step(torch.log_softmax(s_logits / track.temperature, -1), torch.log_softmax(t_logits, -1), nxt)
        live = (~finished).to(c.dtype)
        total, count = total + c * live, count + live
        running = torch.where(finished, running, running_step(track.kind, total, count, running))
        z = (d - running) / d
        tokens.append(nxt)
        budgets.append(z)
        finished = finished | (nxt == tokenizer.eos_token_id)
        if finished.all():
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        step = nxt[:, None]
        s_out = student(inputs_embeds=embed(student, step, z[:, None]), attention_mask=attn, position_ids=pos,
                        use_cache=True, **with_cache(student, cache_of(s_out)))
        t_out = track.teacher(input_ids=step, attention_mask=attn, position_ids=pos, use_cache=True,
                              **with_cache(track.teacher, cache_of(t_out)))
    student.train(was_training)
    completion = torch.stack(tokens, dim=1)
    mask = completion_mask(completion, tokenizer.eos_token_id)
    budget = torch.cat([prompt_budget, torch.stack(budgets, dim=1)], dim=1)
    texts = tokenizer.batch_decode(completion.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True)
    return Rollout(Sequences.build(ids, attn[:, : ids.shape[1]], completion, mask, budget), texts, n_samples)
