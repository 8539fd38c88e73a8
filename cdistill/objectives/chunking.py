"""Position-chunked evaluation of full-vocabulary quantities.

A [B, T, V] tensor of logits is the largest object in LLM RL (64 × 1024 × 152k floats is 40 GB), so
every full-vocabulary quantity is computed over chunks of valid positions only, from hidden states and
the ``lm_head`` weight. Under autograd each chunk is checkpointed: its [chunk, V] logits are recomputed
in the backward pass instead of being kept, so peak memory stays O(chunk × V) with gradients too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ScoringSpec:
    """How completion log-probs are computed from a model's hidden states."""

    temperature: float = 1.0  # the student's log-probs are taken at the rollout temperature, the teacher's at 1
    chunk: int = 1024  # positions per full-vocabulary chunk (peak memory ~ chunk × vocabulary floats)
    vocab: int | None = None  # rows of the output embedding that are real tokens (padding rows cut)
    group_size: int = 1  # consecutive completions that share one prompt forward (1: none shared)

    def replace(self, **changes) -> ScoringSpec:
        return dataclasses.replace(self, **changes)


def positionwise(
    fn: Callable[..., torch.Tensor],
    mask: torch.Tensor,
    tensors: list[torch.Tensor],
    chunk: int = 1024,
) -> torch.Tensor:
    """Apply ``fn`` to the valid positions of ``tensors`` ([B, T, ...] each), ``chunk`` rows at a time.

    ``fn`` receives one [n, ...] slice per tensor and returns [n] or [n, k]. The result is [B, T] (or
    [B, T, k]) float32 with zeros at masked positions. Masked positions are never computed.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    bt = mask.shape
    idx = mask.reshape(-1).bool().nonzero().squeeze(1)
    flat = [t.reshape(bt[0] * bt[1], *t.shape[2:]) for t in tensors]
    pieces = []
    for start in range(0, idx.numel(), chunk):
        sel = idx[start : start + chunk]
        args = [f.index_select(0, sel) for f in flat]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            pieces.append(fn(*args))
    if not pieces:
        probe = fn(*[f[:1] for f in flat]) if flat[0].shape[0] else torch.zeros(1)
        return torch.zeros(*bt, *probe.shape[1:], dtype=torch.float32, device=mask.device)
    vals = torch.cat(pieces).float()
    out = torch.zeros(bt[0] * bt[1], *vals.shape[1:], dtype=torch.float32, device=mask.device)
    return out.index_put((idx,), vals).view(*bt, *vals.shape[1:])


def logits_from_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """float32 logits of a chunk of hidden states [n, H] under an ``lm_head`` weight [V, H].

    ``vocab_size`` cuts padded embedding rows (Qwen2.5 1.5B and 7B pad to different sizes) so that
    student and teacher distributions live on the same, real, vocabulary.
    """
    w = weight if vocab_size is None else weight[:vocab_size]
    logits = hidden.float() @ w.float().t()
    return logits / temperature if temperature != 1.0 else logits


def token_logprob_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    chunk: int = 1024,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t|s_t) of the sampled tokens and the entropy of π(·|s_t), both [B, T], in one vocab pass.

    The entropy is returned detached (it is a diagnostic); the log-prob keeps its graph.
    """

    def fn(h: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits_from_hidden(h, weight, vocab_size, temperature), dim=-1)
        chosen = lp.gather(-1, tok.long().unsqueeze(-1)).squeeze(-1)
        ent = -(lp.exp() * lp).sum(-1).detach()
        return torch.stack([chosen, ent], dim=-1)

    out = positionwise(fn, mask, [hidden, tokens], chunk)
    return out[..., 0], out[..., 1].detach()
