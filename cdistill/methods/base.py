"""What every method shares: the scored batch it sees, and the interface the loop calls.

A method turns a scored batch into per-token advantages (and, for some, an extra differentiable term).
Both are on one scale: each completion's advantages are divided by its group's scale (``optim.adv_scale``),
and so is every extra term of that completion, so that their sum is the gradient of the method's objective
(up to that per-prompt weight).
Rollout, scoring, the policy-gradient update, logging and evaluation are the loop's, identical for all
methods, so that a comparison measures the objective and nothing else.
"""

from __future__ import annotations

import torch

from cdistill.objectives import COSTS, MicroBatch, Scored, group_normalize, group_scale, reward_to_go
from cdistill.rollout.source import Source


def weight(value, key: str) -> float:
    """A method weight >= 0 that was once a switch (``method.informative``): true / false read as 1 / 0."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
        raise ValueError(f"method.{key} must be a finite number >= 0, got {value!r}")
    return float(value)


class Method:
    """Base: subclasses set ``name`` and implement ``advantages``."""

    name = "base"

    def __init__(self, cfg, constraint, optim, reduce_mean=None, seed: int = 0, others=()):
        self.cfg, self.constraint, self.optim = cfg, constraint, optim
        # the constraints after the first, as (name, its config) pairs: one budget per teacher (``constraints``);
        # a method that cannot follow them refuses in ``cdistill.config`` before anything is built
        self.others = tuple(others)
        # the mean of a per-rank number over every process (under accelerate launch; the identity alone)
        self.reduce_mean = reduce_mean or (lambda x: x)
        self.seed = seed  # the run's seed, the same on every rank
        self.scale: torch.Tensor | None = None  # [B] each completion's advantage divisor, set by normalize_returns

    def check_nonnegative(self, *keys: str) -> None:
        """Options that are weights or step sizes: a negative (or non-finite) one turns the objective around."""
        for key in keys:
            v = self.cfg[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v == float("inf"):
                raise ValueError(f"method.{key} must be a finite number >= 0, got {v!r}")

    def normalize(self, rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
        """Per-token rewards → reward-to-go → per-prompt group normalisation (shared by all methods)."""
        return self.normalize_returns(reward_to_go(rewards, mask), mask, group_size)

    def normalize_returns(self, returns: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
        o = self.optim
        self.scale = group_scale(returns, mask, group_size, o.adv_scale)
        return group_normalize(returns, mask, group_size, o.adv_scale, baseline=o.get("adv_baseline", "group"),
                               divisor=self.scale)

    def advantages(self, b: Scored) -> torch.Tensor:
        raise NotImplementedError

    # set by methods whose differentiable term needs the teacher's full distribution at every position
    needs_teacher_hidden = False
    # set by ``saute``: the student takes the remaining budget as an input
    conditions_on_budget = False
    # set by ``seqkd``: trains on the teacher's solutions, generated once per prompt and cached
    uses_cached_teacher_solutions = False
    # set by methods whose advantages are centred on the group of completions of a prompt (a group of one
    # learns nothing)
    group_relative = False
    # unset by methods whose training never reads the budget d (a report compares them with cmdp at cmdp's d,
    # and two budget-trained methods only at the same d)
    trains_on_budget = True
    # unset by methods whose objective cannot hold one budget per teacher (``constraints``): they refuse them
    follows_several_budgets = True
    several_budgets_refusal = ""

    def source(self, step: int) -> Source:
        """Where this step's completions come from (``rollout.sources.Source``): the student's own samples
        unless the method says otherwise."""
        return Source.STUDENT

    def extra_loss(self, b: Scored, batch: MicroBatch, denom: torch.Tensor) -> torch.Tensor | None:
        """A differentiable term added to the policy loss for one micro-batch (``batch``: those rows of ``b``
        re-run through the student with its gradient), or None. By default the pathwise cost term."""
        return self.pathwise_loss(b, batch, denom)

    def holds_cost(self) -> bool:
        """Whether this method's return holds the cost (then ``cost_in_return`` says how much)."""
        return False

    def cost_weights_set_by_prefix(self) -> bool:
        """Whether the weight of each c_t in the return is decided by the prefix before y_t (a constant, or
        "after the first violation"); with a fixed-length ``mean`` or a ``prefix_mean`` it is not."""
        return True

    def cost_in_return(self, b: Scored, rows: torch.Tensor, costs: list[torch.Tensor]) -> torch.Tensor:
        """[b] what the costs take from each completion's return, differentiable in ``costs`` (one [b, T] c_t of
        the completions ``rows`` per constraint, the first one's first, with the student's gradient). Only called
        when ``holds_cost``."""
        raise NotImplementedError

    def pathwise_needed(self) -> bool:
        """The pathwise term is added where its expectation is not zero: for token_kl always; for logratio,
        whose ∇θ c_t = ∇θ log π_θ(y_t|s_t) has zero mean given the prefix, only when a cost's weight is not
        decided by the prefix (soft_penalty / lagrangian with a mean or prefix_mean constraint)."""
        if not (self.holds_cost() and self.constraint.get("pathwise_gradient", True)):
            return False
        costs = [COSTS[c.cost] for c in (self.constraint, *(c for _, c in self.others))]
        return any(c.depends_on_student and (c.pathwise or not self.cost_weights_set_by_prefix()) for c in costs)

    def pathwise_loss(self, b: Scored, batch: MicroBatch, denom: torch.Tensor) -> torch.Tensor | None:
        """The pathwise part of the gradient of a return that holds a cost depending on θ: ∇θ of what the cost
        takes from each return, the completion held fixed (the score-function part is in the advantages).
        Shared by every method whose reward holds the cost, each with its own weight (``cost_in_return``);
        divided like the advantages by each completion's scale and by the batch's token count. Off where its
        expectation is zero (``pathwise_needed``) or with ``constraint.pathwise_gradient=false``."""
        if not self.pathwise_needed():
            return None
        lost = self.cost_in_return(b, batch.rows,
                                   batch.all_costs(self.constraint.cost, tuple(c.cost for _, c in self.others)))
        scale = 1.0 if self.scale is None else self.scale[batch.rows]  # methods that do not normalise: opd
        return (lost / scale).sum() / denom

    def after_step(self, b: Scored) -> dict[str, float]:
        """Update method state (multipliers) once per optimiser step; return what to log."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
