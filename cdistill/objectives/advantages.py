"""Returns and per-prompt group normalisation."""

from __future__ import annotations

import torch

SCALES = ("std", "none")


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{k≥t} r_k over valid tokens (undiscounted: the token MDP has a short, finite horizon)."""
    r = rewards * mask
    return r.flip(1).cumsum(1).flip(1) * mask


def future_return(rewards: torch.Tensor, immediate: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t − r^imm_t: the return from token t on, less the part of r_t that is taken in exact expectation
    elsewhere (``weakest_link``: the penalty / informative reward of token t itself)."""
    return (reward_to_go(rewards, mask) - immediate) * mask


def group_normalize(
    values: torch.Tensor, mask: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-6
) -> torch.Tensor:
    """Normalise per-token values within each prompt's group of ``group_size`` consecutive completions.

    The group's statistics weigh each completion equally and each of its tokens equally:
    μ = mean_i mean_t v_it and σ² = mean_i mean_t (v_it − μ)². For an outcome reward (v_it = R_i for every
    t) this is exactly GRPO's (R_i − mean R) / std R (population std). ``scale="none"`` subtracts μ only
    (Dr. GRPO). Empty completions take no part in the statistics.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; expected one of {SCALES}")
    b, t = values.shape
    if group_size <= 0 or b % group_size:
        raise ValueError(f"batch of {b} completions is not a whole number of groups of {group_size}")
    mf = mask.to(values.dtype).view(-1, group_size, t)
    v = values.view(-1, group_size, t)
    n = mf.sum(-1)  # [groups, G]
    present = (n > 0).to(values.dtype)
    n_present = present.sum(-1, keepdim=True).clamp(min=1)
    per_sample_mean = (v * mf).sum(-1) / n.clamp(min=1)
    mu = (per_sample_mean * present).sum(-1, keepdim=True) / n_present  # [groups, 1]
    centred = (v - mu.unsqueeze(-1)) * mf
    if scale == "std":
        per_sample_var = (centred**2).sum(-1) / n.clamp(min=1)
        var = (per_sample_var * present).sum(-1, keepdim=True) / n_present
        centred = centred / (var.sqrt().unsqueeze(-1) + eps)
    return centred.view(b, t)
