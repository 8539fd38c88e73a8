"""Importance weights for samples drawn by another engine than the one that trains.

A rollout engine (vLLM) samples from μ, its own numerical version of the policy; the trainer computes
π_old for the same tokens with different kernels, precision and batching, so μ ≠ π_old token by token. The
policy gradient is an expectation under π_old: samples from μ need the weight π_old / μ. Truncating it at a
cap (truncated importance sampling, TIS) bounds the variance that rare large ratios would add.
"""

from __future__ import annotations

import torch

LEVELS = ("none", "token", "sequence")


def truncated_importance_weights(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                                 level: str = "token") -> torch.Tensor:
    """Per-token weights [B, T], constants (no gradient), zero at masked positions.

    ``token``: w_t = min(π(y_t|s_t) / μ(y_t|s_t), cap). ``sequence``: one weight per completion,
    min(Π_t π(y_t|s_t) / μ(y_t|s_t), cap), given to each of its tokens. ``none``: 1 everywhere.
    ``logp`` is the trainer's log-prob of each sampled token at sampling time, ``sampler_logp`` the engine's;
    where the engine reported no finite log-prob the token keeps weight 1 (no information, no correction).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown importance correction {level!r}; expected one of {', '.join(LEVELS)}")
    if cap <= 0:
        raise ValueError(f"the importance-weight cap must be positive, got {cap}")
    m = mask.to(logp.dtype)
    if level == "none":
        return m
    known = torch.isfinite(sampler_logp)
    log_ratio = torch.where(known, logp.detach() - sampler_logp.detach().nan_to_num(0.0), 0.0) * m
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=1, keepdim=True).expand_as(logp)
    # min(exp(x), cap) = exp(min(x, log cap)): no overflow for large log-ratios
    return torch.exp(log_ratio.clamp(max=float(torch.log(torch.tensor(cap))))) * m
