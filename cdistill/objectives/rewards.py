"""Per-token (modified) rewards r̃_t, [B, T], zero at masked positions."""

from __future__ import annotations

import torch

from cdistill.objectives.constraints import ConstraintStats
from cdistill.objectives.masks import last_token_onehot

# where the absorbing penalty −n falls: the first violating token only (the paper), or every absorbed token (Sauté)
PENALTY_ON = ("first", "every")


def terminal_reward(task_reward: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sequence reward R(x, y) [B] placed on the last generated token (what ``grpo`` optimises)."""
    return last_token_onehot(mask).to(task_reward.dtype) * task_reward.unsqueeze(1)


def cmdp_rewards(
    task_reward: torch.Tensor,
    costs: torch.Tensor,
    mask: torch.Tensor,
    stats: ConstraintStats,
    penalty: float,
    informative: float = 1.0,
    penalty_on: str = "first",
) -> torch.Tensor:
    """Sauté's modified reward without state augmentation.

    Within budget (no violation): 0 per token and R at the last one. At the first violation τ the task
    reward is forfeited and r̃_τ = −penalty; every later token gets −informative · c_t (the absorbing state
    still pulls back toward the teacher; ``informative`` is a weight >= 0, 0 switches it off). With
    ``penalty_on="every"`` every token from τ on gets −penalty (Sauté's own absorbing reward, −n for as long as
    the budget is exhausted), not only the first. ``costs`` may carry grad; the result is for returns, so it is
    detached.
    """
    if penalty_on not in PENALTY_ON:
        raise ValueError(f"penalty_on must be one of {', '.join(PENALTY_ON)}, got {penalty_on!r}")
    violated = stats.violation_step >= 0
    r = terminal_reward(task_reward * (~violated).to(task_reward.dtype), mask)
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(stats.absorbed)
    at_violation = (pos == stats.violation_step.unsqueeze(1)) & violated.unsqueeze(1)
    penalised = stats.absorbed if penalty_on == "every" else at_violation
    r = r - penalty * penalised.to(r.dtype)
    if informative:
        r = r - float(informative) * costs.detach() * (stats.absorbed & ~at_violation).to(r.dtype)
    return r * mask


def after_violation(stats: ConstraintStats) -> torch.Tensor:
    """Bool [B, T]: tokens strictly after the first violation (where the informative −c_t applies)."""
    pos = torch.arange(stats.absorbed.shape[1], device=stats.absorbed.device).expand_as(stats.absorbed)
    return stats.absorbed & (pos > stats.violation_step.unsqueeze(1))


def soft_penalty_rewards(
    task_reward: torch.Tensor, stats: ConstraintStats, mask: torch.Tensor, penalty: float
) -> torch.Tensor:
    """R − λ C(y) with a fixed λ, the cost spread over tokens by its increments δ_t (Σ δ_t = C(y))."""
    return terminal_reward(task_reward, mask) - penalty * stats.increments.detach() * mask
