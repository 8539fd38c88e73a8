"""``opd``: on-policy distillation, divergence only. Minimise the reverse KL to the teacher on the
student's own samples, with the per-token advantage −c_t (``estimator: sampled``) or the exact
full-vocabulary KL at each visited position, differentiated directly (``estimator: full``). No task reward.
"""

import torch

from cdistill.methods.base import Method
from cdistill.objectives import COSTS, Scored, reward_to_go, token_mean

ESTIMATORS = ("sampled", "full")


class OPD(Method):
    name = "opd"
    trains_on_budget = False

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        if cfg.estimator not in ESTIMATORS:
            raise ValueError(f"unknown opd estimator {cfg.estimator!r}; expected one of {ESTIMATORS}")
        if cfg.estimator == "sampled" and cfg.returns == "token" and not COSTS[constraint.cost].depends_on_token:
            raise ValueError(f"opd's sampled estimator with method.returns=token learns nothing from "
                             f"constraint.cost={constraint.cost}: c_t is a function of the prefix alone, so −c_t as "
                             "the sampled token's advantage has no expected gradient; use method.estimator=full")
        self.needs_teacher_hidden = cfg.estimator == "full"

    def advantages(self, b: Scored):
        if self.cfg.estimator == "full":
            return torch.zeros_like(b.costs)
        # −c_t per token (no credit to earlier tokens, as in on-policy distillation) or its reward-to-go
        adv = -b.costs * b.mask
        return reward_to_go(adv, b.mask) if self.cfg.returns == "to_go" else adv

    def holds_cost(self):
        return self.cfg.estimator == "sampled" and self.cfg.returns == "to_go"  # the return −Σ_t c_t

    def cost_in_return(self, b: Scored, rows, costs):
        return costs[0].sum(1)  # the first constraint's teacher: further budgets are only measured

    def extra_loss(self, b: Scored, batch, denom):
        if self.cfg.estimator != "full":
            return self.pathwise_loss(b, batch, denom)  # token_kl with returns=to_go
        return token_mean(batch.cost("token_kl"), batch.mask, denom)
