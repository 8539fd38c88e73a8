"""``grpo``: task reward only (λ = 0). The reward-hacking reference: nothing keeps it near the teacher."""

from cdistill.methods.base import Method
from cdistill.objectives import Scored, terminal_reward


class GRPO(Method):
    name = "grpo"
    group_relative = True
    trains_on_budget = False

    def advantages(self, b: Scored):
        return self.normalize(terminal_reward(b.task_reward, b.mask), b.mask, b.group_size)
