"""The mathematics of cdistill as pure torch functions.

Nothing here knows about models, trainers or configs: every function takes tensors (and plain numbers)
and returns tensors, so each one is tested against a brute-force reference in ``tests/``.

Shapes: ``B`` completions, ``T`` generated positions, ``V`` vocabulary, ``H`` hidden size. Every
per-token function takes a completion ``mask`` ([B, T], bool or 0/1): padding and anything after the
first EOS never counts. Masks are prefix masks (valid positions first), as generation produces them.
"""

from cdistill.objectives.advantages import future_return, group_normalize, group_scale, reward_to_go
from cdistill.objectives.batch import Budget, MicroBatch, Scored
from cdistill.objectives.chunking import ScoringSpec, positionwise
from cdistill.objectives.constraints import KINDS, ConstraintStats, constraint_stats, joint_stats, running_step
from cdistill.objectives.costs import COSTS, Cost, logratio_cost, teacher_nll_cost, token_jsd_cost, token_kl_cost
from cdistill.objectives.divergences import entropy_from_logits, generalized_jsd, kl_estimate
from cdistill.objectives.importance import truncated_importance_weights
from cdistill.objectives.losses import (
    clipped_policy_loss,
    expected_immediate_reward,
    token_mean,
    weakest_link_exact_term,
)
from cdistill.objectives.masks import completion_mask, last_token_onehot
from cdistill.objectives.multipliers import CONTROLLERS
from cdistill.objectives.rewards import (
    cmdp_rewards,
    soft_penalty_rewards,
    terminal_reward,
)

__all__ = [
    "COSTS",
    "Budget",
    "CONTROLLERS",
    "KINDS",
    "ConstraintStats",
    "Cost",
    "MicroBatch",
    "Scored",
    "ScoringSpec",
    "clipped_policy_loss",
    "cmdp_rewards",
    "completion_mask",
    "constraint_stats",
    "entropy_from_logits",
    "expected_immediate_reward",
    "future_return",
    "generalized_jsd",
    "group_normalize",
    "group_scale",
    "joint_stats",
    "kl_estimate",
    "last_token_onehot",
    "logratio_cost",
    "positionwise",
    "reward_to_go",
    "running_step",
    "soft_penalty_rewards",
    "teacher_nll_cost",
    "terminal_reward",
    "token_jsd_cost",
    "token_kl_cost",
    "token_mean",
    "truncated_importance_weights",
    "weakest_link_exact_term",
]
