"""``soft_penalty``: the soft-Lagrangian baseline (GKD-GRPO / KDRL style), reward R − λ C(y), λ fixed."""

from cdistill.methods.base import Method
from cdistill.objectives import Scored, constraint_stats, soft_penalty_rewards


class SoftPenalty(Method):
    name = "soft_penalty"
    group_relative = True

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        self.check_nonnegative("penalty")
    trains_on_budget = False

    def advantages(self, b: Scored):
        rewards = soft_penalty_rewards(b.task_reward, b.stats, b.mask, self.cfg.penalty)
        return self.normalize(rewards, b.mask, b.group_size)

    def holds_cost(self):
        return self.cfg.penalty != 0

    def cost_weights_set_by_prefix(self):
        return self.constraint.kind == "sum"

    def cost_in_return(self, b: Scored, rows, costs):
        c = self.constraint
        return self.cfg.penalty * constraint_stats(costs, b.mask[rows], c.threshold, c.kind).value
