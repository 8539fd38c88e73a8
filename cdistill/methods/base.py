"""What every method shares: the scored batch it sees, and the interface the loop calls.

A method turns a scored batch into per-token advantages (and, for some, an extra differentiable term).
Rollout, scoring, the policy-gradient update, logging and evaluation are the loop's, identical for all
methods, so that a comparison measures the objective and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdistill.objectives import ConstraintStats, group_normalize, reward_to_go


@dataclass
class Scored:
    """One step's rollouts, scored. All [B, T] tensors are detached and zero at masked positions."""

    mask: torch.Tensor  # [B, T] bool
    task_reward: torch.Tensor  # [B] verifier reward R(x, y) in {0, 1}
    old_logp: torch.Tensor  # [B, T] student log-probs at sampling time
    teacher_logp: torch.Tensor  # [B, T]
    costs: torch.Tensor  # [B, T] c_t under constraint.cost
    stats: ConstraintStats
    group_size: int
    teacher_hidden: torch.Tensor | None = None  # [B, T, H], kept only when the cost needs it (token_kl)
    sampler_logp: torch.Tensor | None = None  # [B, T] the rollout engine's log-probs (vLLM), else None


class Method:
    """Base: subclasses set ``name`` and implement ``advantages``."""

    name = "base"

    def __init__(self, cfg, constraint, optim):
        self.cfg, self.constraint, self.optim = cfg, constraint, optim
        # the mean of a per-rank number over every process (set by the loop under accelerate launch)
        self.reduce_mean = lambda x: x

    def normalize(self, rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
        """Per-token rewards → reward-to-go → per-prompt group normalisation (shared by all methods)."""
        return self.normalize_returns(reward_to_go(rewards, mask), mask, group_size)

    def normalize_returns(self, returns: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_normalize(returns, mask, group_size, self.optim.adv_scale)

    def advantages(self, b: Scored) -> torch.Tensor:
        raise NotImplementedError

    # set by methods whose differentiable term needs the teacher's full distribution at every position
    needs_teacher_hidden = False
    # set by ``saute``: the student takes the remaining budget as an input
    conditions_on_budget = False

    def source(self, step: int) -> str:
        """Where this step's completions come from: ``student`` samples (on-policy), ``teacher`` samples,
        ``reference`` solutions of the dataset, ``teacher_cached`` (greedy teacher solutions, generated once)
        or ``budget`` (student samples conditioned on the remaining budget, tracked with the teacher)."""
        return "student"

    def extra_loss(self, b: Scored, live, denom: torch.Tensor):
        """A differentiable term added to the policy loss for one micro-batch, or None.

        ``live`` (``cdistill.scoring.Live``) holds that micro-batch re-scored with the student's gradient.
        """
        return None

    def after_step(self, b: Scored) -> dict[str, float]:
        """Update method state (multipliers) once per optimiser step; return what to log."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
