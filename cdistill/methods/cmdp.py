"""``cmdp``: the paper's method, Sauté RL without state augmentation.

The remaining budget z_t = d − C_t is a function of the prefix, so the student needs neither a budget
input nor the teacher at deployment. Within budget the student earns the task reward at the end; from
the first violation on the state is absorbing: the task reward is forfeited, the violating token gets
−penalty, and later tokens get −c_t so that a violating completion still pulls back toward the teacher.
"""

from cdistill.methods.base import Method
from cdistill.objectives import COSTS, Scored, cmdp_rewards, token_mean
from cdistill.objectives.rewards import after_violation


class CMDP(Method):
    name = "cmdp"

    def advantages(self, b: Scored):
        rewards = cmdp_rewards(b.task_reward, b.costs, b.mask, b.stats, self.cfg.penalty, self.cfg.informative)
        return self.normalize(rewards, b.mask, b.group_size)

    def extra_loss(self, b: Scored, batch, denom):
        # An informative reward −c_t that depends on θ (logratio, token_kl): besides its score-function part
        # (in the advantages) it has a direct part, ∇θ Σ_{t>τ} c_t, which this term adds.
        if not (self.cfg.informative and self.cfg.direct_gradient and COSTS[self.constraint.cost].depends_on_student):
            return None
        return self.cfg.direct_gradient * token_mean(batch.cost(self.constraint.cost),
                                                     after_violation(b.stats)[batch.rows], denom)

    def after_step(self, b: Scored):
        return {"absorbed_rate": float((b.stats.violation_step >= 0).float().mean())}

