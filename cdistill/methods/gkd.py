"""``gkd``: generalised knowledge distillation (Agarwal et al. 2024). Minimise the generalised JSD(β)
between teacher and student at every position of a batch that is, with probability
``on_policy_fraction``, the student's own samples and otherwise teacher samples (``off_policy: teacher``)
or the dataset's reference solutions (``off_policy: reference``). A supervised loss: no reward, no
policy gradient through the sampling.
"""

import random

import torch

from cdistill.methods.base import Method
from cdistill.objectives import Scored, token_jsd_cost, token_mean
from cdistill.rollout.source import Source


class GKD(Method):
    name = "gkd"
    needs_teacher_hidden = True

    def __init__(self, cfg, constraint, optim, reduce_mean=None):
        super().__init__(cfg, constraint, optim, reduce_mean)
        if cfg.off_policy not in ("teacher", "reference"):
            raise ValueError(f"unknown gkd off_policy source {cfg.off_policy!r}; expected teacher or reference")
        self.last_source = Source.STUDENT

    def source(self, step: int) -> Source:
        # the global RNG is seeded by the run and saved in checkpoints: the mixture is reproducible
        on_policy = random.random() < self.cfg.on_policy_fraction
        self.last_source = Source.STUDENT if on_policy else Source(self.cfg.off_policy)
        return self.last_source

    def advantages(self, b: Scored):
        return torch.zeros_like(b.costs)

    def extra_loss(self, b: Scored, batch, denom):
        jsd = token_jsd_cost(batch.hidden, batch.student_weight, batch.teacher_hidden, batch.teacher_weight,
                             batch.mask, self.cfg.beta, batch.spec.chunk, batch.spec.vocab, batch.spec.temperature)
        return token_mean(jsd, batch.mask, denom)

    def after_step(self, b: Scored):
        return {"on_policy": float(self.last_source is Source.STUDENT)}
