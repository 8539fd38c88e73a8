"""Position-chunked evaluation of full-vocabulary quantities.

A [B, T, V] tensor of logits is the largest object in LLM RL (64 × 1024 × 152k floats is 40 GB), so
every full-vocabulary quantity is computed over chunks of valid positions only, from hidden states and
the ``lm_head`` weight. Under autograd each chunk is checkpointed: its [chunk, V] logits are recomputed
in the backward pass instead of being kept, so peak memory stays O(chunk × V) with gradients too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def positionwise(
    fn: Callable[..., torch.Tensor],
    mask: torch.Tensor,
    tensors: list[torch.Tensor],
    chunk: int = 1024,
) -> torch.Tensor:
    """Apply ``fn`` to the valid positions of ``tensors`` ([B, T, ...] each), ``chunk`` rows at a time.

    ``fn`` receives one [n, ...] slice per tensor and returns [n]. The result is [B, T] with zeros at
    masked positions. Masked positions are never computed.
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
    out = torch.zeros(bt[0] * bt[1], dtype=torch.float32, device=mask.device)
    if pieces:
        out = out.index_put((idx,), torch.cat(pieces).float())
    return out.view(bt)


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
