"""``cmdp``: the paper's method, Sauté RL without state augmentation.

The remaining budget z_t = d − C_t is a function of the prefix, so the student needs neither a budget
input nor the teacher at deployment. Within budget the student earns the task reward at the end; from
the first violation on the state is absorbing: the task reward is forfeited, the violating token gets
−penalty (every absorbed token with ``penalty_on=every``, Sauté's own absorbing reward), and later tokens get
−informative · c_t so that a violating completion still pulls back toward the teacher (0: not at all).

With several budgets (one per teacher, ``constraints``) the state is absorbing from the first token that breaks
any of them, and the informative term after it is the sum of every constraint's c_t.
"""

import torch

from cdistill.methods.base import Method, weight
from cdistill.objectives import Scored, cmdp_rewards
from cdistill.objectives.rewards import after_violation


class CMDP(Method):
    name = "cmdp"
    group_relative = True

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        self.informative = weight(self.cfg.informative, "informative")
        self.check_nonnegative("penalty")
        self.penalty_on = self.cfg.get("penalty_on", "first")

    def advantages(self, b: Scored):
        rewards = cmdp_rewards(b.task_reward, summed(b.all_costs()), b.mask, b.joint, self.cfg.penalty,
                               self.informative, self.penalty_on)
        return self.normalize(rewards, b.mask, b.group_size)

    def holds_cost(self):
        return self.informative > 0

    def cost_in_return(self, b: Scored, rows, costs):
        # the informative reward −w·c_t on every token after the first violation (decided by the prefix)
        return self.informative * (summed(costs) * after_violation(b.joint)[rows]).sum(1)

    def after_step(self, b: Scored):
        return {"absorbed_rate": float((b.joint.violation_step >= 0).float().mean())}


def summed(costs: list[torch.Tensor]) -> torch.Tensor:
    """Every constraint's c_t added up (the first one's tensor itself when it is alone)."""
    return costs[0] if len(costs) == 1 else torch.stack(costs).sum(0)
