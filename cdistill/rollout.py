"""Sampling completions from the student with Hugging Face ``generate``."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopPLogitsWarper

from cdistill.budget import embed, has_budget_input
from cdistill.models import Sequences, cache_of, with_cache
from cdistill.objectives.costs import kl_rows
from cdistill.objectives.masks import completion_mask


@dataclass
class Rollout:
    seq: Sequences
    texts: list[str]  # decoded completions, EOS and padding stripped
    group_size: int
    # [B, T] the log-prob the sampling engine drew each token with, when it is not the trainer's own
    # forward (vLLM); None for the HF backend, whose sampler is the trained model itself
    sampler_logp: torch.Tensor | None = None


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
    teacher's view of the token just sampled. ``budget`` (a ``BudgetTracking``) then drives
    ``generate_with_budget`` instead.
    """
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


@dataclass
class BudgetTracking:
    """What sampling a ``saute`` student needs besides the student: the teacher and the constraint."""

    teacher: torch.nn.Module
    cost: str  # constraint.cost
    kind: str  # constraint.kind
    threshold: float
    vocab: int
    temperature: float  # the student's log-probs in the cost are taken at the rollout temperature


def _running(kind: str, total: torch.Tensor, count: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The constraint's running statistic C_t after one more token (see objectives.constraints)."""
    if kind == "sum":
        return total
    mean = total / count.clamp(min=1)
    return mean if kind == "mean" else torch.maximum(prev, mean)


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
        if gen.do_sample:
            scaled = s_logits / gen.temperature
            if top_p is not None:
                scaled = top_p(None, scaled)
            nxt = torch.multinomial(torch.softmax(scaled, -1), 1).squeeze(1)
        else:
            nxt = s_logits.argmax(-1)
        nxt = nxt.masked_fill(finished, tokenizer.pad_token_id)
        s_lp = torch.log_softmax(s_logits / track.temperature, -1)
        t_lp = torch.log_softmax(t_logits, -1)
        if track.cost == "logratio":
            c = (s_lp - t_lp).gather(1, nxt[:, None]).squeeze(1)
        elif track.cost == "teacher_nll":
            c = -t_lp.gather(1, nxt[:, None]).squeeze(1)
        else:
            c = kl_rows(s_logits / track.temperature, t_logits)
        live = (~finished).to(c.dtype)
        total, count = total + c * live, count + live
        running = torch.where(finished, running, _running(track.kind, total, count, running))
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
