"""``gkd``: generalised knowledge distillation (Agarwal et al. 2024). Minimise the generalised JSD(β)
between teacher and student at every position of a batch that is, with probability
``on_policy_fraction``, the student's own samples and otherwise teacher samples (``off_policy: teacher``)
or the dataset's reference solutions (``off_policy: reference``). A supervised loss: no reward, no
policy gradient through the sampling.
"""

import random

import torch

from cdistill.methods.base import Method, Scored
from cdistill.objectives import token_jsd_cost, token_mean


class GKD(Method):
    name = "gkd"
    needs_teacher_hidden = True

    def __init__(self, cfg, constraint, optim):
        super().__init__(cfg, constraint, optim)
        if cfg.off_policy not in ("teacher", "reference"):
            raise ValueError(f"unknown gkd off_policy source {cfg.off_policy!r}; expected teacher or reference")
        self.last_source = "student"

    def source(self, step: int) -> str:
        # the global RNG is seeded by the run and saved in checkpoints: the mixture is reproducible
        self.last_source = "student" if random.random() < self.cfg.on_policy_fraction else self.cfg.off_policy
        return self.last_source

    def advantages(self, b: Scored):
        return torch.zeros_like(b.costs)

    def extra_loss(self, b: Scored, live, denom):
        jsd = token_jsd_cost(live.hidden, live.student_weight, live.teacher_hidden, live.teacher_weight, live.mask,
                             self.cfg.beta, live.chunk, live.vocab, live.temperature)
        return token_mean(jsd, live.mask, denom)

    def after_step(self, b: Scored):
        return {"on_policy": float(self.last_source == "student")}
