"""The scored forward: a model's log-probs, entropies and hidden states on the completion tokens of
``Sequences`` (prompt and completion side by side), computed in chunks without [B, T, V] logits."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch

from cdistill.models.budget_input import embed, has_budget_input
from cdistill.objectives.chunking import ScoringSpec, token_logprob_and_entropy
from cdistill.objectives.topk import TopK


@dataclass
class Sequences:
    """Prompt and completion tokens laid side by side, as one causal-LM input."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    prompt_len: int
    completion_ids: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] bool
    budget: torch.Tensor | None = None  # [B, P + T] z_t / d fed at each input position (``saute`` rollouts)

    @staticmethod
    def build(prompt_ids, prompt_mask, completion_ids, completion_mask, budget=None) -> Sequences:
        attn = torch.cat([prompt_mask.long(), completion_mask.long()], dim=1)
        # positions as generate() assigns them under left padding; a mismatch would bias every log-prob
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return Sequences(
            torch.cat([prompt_ids, completion_ids], dim=1), attn, pos, prompt_ids.shape[1],
            completion_ids, completion_mask.bool(), budget,
        )

    def for_autograd(self) -> Sequences:
        """A copy whose tensors autograd may save: generation runs under inference_mode, and its tensors
        cannot take part in a differentiated forward."""
        return Sequences(*(x.clone() if isinstance(x, torch.Tensor) else x for x in vars(self).values()))

    def select(self, rows: torch.Tensor | slice) -> Sequences:
        return Sequences(self.input_ids[rows], self.attention_mask[rows], self.position_ids[rows], self.prompt_len,
                         self.completion_ids[rows], self.completion_mask[rows],
                         None if self.budget is None else self.budget[rows])


def cache_of(out):
    """The KV cache a forward returned (``cache`` since transformers 5.x, ``past_key_values`` before)."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


def with_cache(model, cache) -> dict:
    """``cache`` as the keyword ``model.forward`` takes it."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _inputs(model, seq: Sequences, cols: slice, rows=slice(None)) -> dict:
    ids = seq.input_ids[rows, cols]
    if seq.budget is not None and has_budget_input(model):
        return {"inputs_embeds": embed(model, ids, seq.budget[rows, cols])}
    return {"input_ids": ids}


def prompt_groups(group_size: int, micro_batch: int, share_prompt: bool) -> int:
    """The group size to share prompts over (``completion_hidden``): 1 (no sharing) unless enabled and every
    micro-batch holds whole groups."""
    return group_size if share_prompt and micro_batch % group_size == 0 else 1


def completion_hidden(model, seq: Sequences, group_size: int = 1) -> torch.Tensor:
    """Final hidden states [B, T, H] at the positions that predict each completion token.

    With ``group_size`` G > 1 (rows g·G … g·G + G − 1 share one prompt, as sampled groups do) the prompt
    is run once per group and its KV cache repeated for the G completions: the prompt's share of the
    forward (and, under autograd, of the backward) shrinks G-fold; gradients flow through the shared cache.
    A budget-conditioned student (``saute``) sees the budget recorded when the completion was sampled.
    """
    dec = model.get_decoder()
    p, t = seq.prompt_len, seq.completion_ids.shape[1]
    if group_size > 1 and seq.input_ids.shape[0] % group_size == 0:
        first = slice(None, None, group_size)
        head = dec(**_inputs(model, seq, slice(None, p), first), attention_mask=seq.attention_mask[first, :p],
                   position_ids=seq.position_ids[first, :p], use_cache=True)
        cache = cache_of(head)
        cache.batch_repeat_interleave(group_size)
        tail = dec(**_inputs(model, seq, slice(p, None)), attention_mask=seq.attention_mask,
                   position_ids=seq.position_ids[:, p:], use_cache=True, **with_cache(dec, cache))
        last = head.last_hidden_state[:, -1:].repeat_interleave(group_size, dim=0)
        return torch.cat([last, tail.last_hidden_state[:, : t - 1]], dim=1)
    out = dec(**_inputs(model, seq, slice(None)), attention_mask=seq.attention_mask, position_ids=seq.position_ids,
              use_cache=False)
    return out.last_hidden_state[:, p - 1 : p - 1 + t]


class CompletionForward(NamedTuple):
    """A model's forward on the completion tokens."""

    logp: torch.Tensor  # [B, T] log-probs of the completion tokens (at ``spec.temperature``)
    entropy: torch.Tensor  # [B, T]
    hidden: torch.Tensor | None  # [B, T, H] final hidden states at the positions that predict them (None: served)
    topk: TopK | None = None  # a served teacher's top-k log-probs (model.teacher.server.top_k)


AT_TEMPERATURE_ONE = ScoringSpec()


def output_weight(model) -> torch.Tensor | None:
    """The output embedding [V, H] that full-vocabulary terms read; None for a teacher behind a server or with
    another vocabulary (``cdistill.models.cross_tokenizer``)."""
    if getattr(model, "served", False) or getattr(model, "cross_tokenizer", False):
        return None
    return model.get_output_embeddings().weight


def completion_forward(model, seq: Sequences, spec: ScoringSpec = AT_TEMPERATURE_ONE) -> CompletionForward:
    sharded = getattr(model, "completion_forward", None)
    if sharded is not None:  # a sharded (FSDP) model: its forward must enter through the FSDP root
        return sharded(seq, spec)
    h = completion_hidden(model, seq, spec.group_size)
    w = model.get_output_embeddings().weight
    logp, ent = token_logprob_and_entropy(h, w, seq.completion_ids, seq.completion_mask, spec.chunk,
                                          spec.temperature, spec.vocab)
    return CompletionForward(logp, ent, h)
