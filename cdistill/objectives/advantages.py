"""Returns and per-prompt group normalisation."""

from __future__ import annotations

import torch

SCALES = ("std", "none")
BASELINES = ("group", "none")


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{k≥t} r_k over valid tokens (undiscounted: the token MDP has a short, finite horizon)."""
    r = rewards * mask
    return r.flip(1).cumsum(1).flip(1) * mask


def future_return(rewards: torch.Tensor, immediate: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t − r^imm_t: the return from token t on, less the part of r_t that is taken in exact expectation
    elsewhere (``weakest_link``: the penalty / informative reward of token t itself)."""
    return (reward_to_go(rewards, mask) - immediate) * mask


def group_normalize(
    values: torch.Tensor, mask: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-6,
    baseline: str = "group", divisor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Centre and scale per-token values within each prompt's group of ``group_size`` consecutive completions.

    ``baseline="group"``: subtract μ = mean_i mean_t v_it (each completion weighs the same, and each of its
    tokens); ``"none"`` keeps the raw returns (the exact policy gradient, for tests and diagnostics).
    ``scale="std"``: divide by σ, σ² = mean_i mean_t (v_it − μ)², pooled over every token of the group: for an
    outcome reward (v_it = R_i) this is exactly GRPO's (R_i − mean R) / std R, but a per-token return lets one
    completion's cost tail set σ for the whole group. ``scale="none"`` (Dr. GRPO) divides by nothing.
    ``group_scale`` gives the divisor of each row, which extra differentiable terms must share; a caller
    that already holds it passes it as ``divisor``.
    Empty completions take no part in the statistics.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown advantage baseline {baseline!r}; expected one of {BASELINES}")
    b, t = values.shape
    if divisor is None:
        divisor = group_scale(values, mask, group_size, scale, eps)
    centred = values * mask.to(values.dtype)
    if baseline == "group":
        mu = _group_mean(values, mask, group_size).expand(-1, group_size).reshape(b, 1)
        centred = (values - mu) * mask.to(values.dtype)
    return centred / divisor[:, None]


def group_scale(values: torch.Tensor, mask: torch.Tensor, group_size: int, scale: str = "std",
                eps: float = 1e-6) -> torch.Tensor:
    """[B] what ``group_normalize`` divides each completion's values by: its group's σ + ε, or 1."""
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; expected one of {SCALES}")
    b, t = values.shape
    _check_groups(b, group_size)
    if scale == "none":
        return torch.ones(b, dtype=values.dtype, device=values.device)
    mf = mask.to(values.dtype).view(-1, group_size, t)
    mu = _group_mean(values, mask, group_size)
    centred = (values.view(-1, group_size, t) - mu.unsqueeze(-1)) * mf
    n = mf.sum(-1)
    present = (n > 0).to(values.dtype)
    per_sample_var = (centred**2).sum(-1) / n.clamp(min=1)
    var = (per_sample_var * present).sum(-1, keepdim=True) / present.sum(-1, keepdim=True).clamp(min=1)
    # a group whose returns are all equal has zero advantages whatever the divisor: 1 keeps its extra terms
    # (which are not zero) from being multiplied by 1/ε
    scale = torch.where(var > 0, var.sqrt() + eps, torch.ones_like(var))
    return scale.expand(-1, group_size).reshape(b)


def _check_groups(b: int, group_size: int) -> None:
    if group_size <= 0 or b % group_size:
        raise ValueError(f"batch of {b} completions is not a whole number of groups of {group_size}")


def _group_mean(values: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """[groups, 1] μ: the mean over the group's completions of each completion's mean over its tokens."""
    b, t = values.shape
    _check_groups(b, group_size)
    mf = mask.to(values.dtype).view(-1, group_size, t)
    n = mf.sum(-1)
    present = (n > 0).to(values.dtype)
    per_sample_mean = (values.view(-1, group_size, t) * mf).sum(-1) / n.clamp(min=1)
    return (per_sample_mean * present).sum(-1, keepdim=True) / present.sum(-1, keepdim=True).clamp(min=1)
