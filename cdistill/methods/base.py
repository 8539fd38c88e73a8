"""What every method shares: the scored batch it sees, and the interface the loop calls.

A method turns a scored batch into per-token advantages (and, for some, an extra differentiable term).
Rollout, scoring, the policy-gradient update, logging and evaluation are the loop's, identical for all
methods, so that a comparison measures the objective and nothing else.
"""

from __future__ import annotations

import torch

from cdistill.objectives import MicroBatch, Scored, group_normalize, reward_to_go
from cdistill.rollout.source import Source


class Method:
    """Base: subclasses set ``name`` and implement ``advantages``."""

    name = "base"

    def __init__(self, cfg, constraint, optim, reduce_mean=None):
        self.cfg, self.constraint, self.optim = cfg, constraint, optim
        # the mean of a per-rank number over every process (under accelerate launch; the identity alone)
        self.reduce_mean = reduce_mean or (lambda x: x)

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
    # set by ``seqkd``: trains on the teacher's solutions, generated once per prompt and cached
    uses_cached_teacher_solutions = False

    def source(self, step: int) -> Source:
        """Where this step's completions come from (``rollout.sources.Source``): the student's own samples
        unless the method says otherwise."""
        return Source.STUDENT

    def extra_loss(self, b: Scored, batch: MicroBatch, denom: torch.Tensor) -> torch.Tensor | None:
        """A differentiable term added to the policy loss for one micro-batch (``batch``: those rows of ``b``
        re-run through the student with its gradient), or None."""
        return None

    def after_step(self, b: Scored) -> dict[str, float]:
        """Update method state (multipliers) once per optimiser step; return what to log."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
