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
from cdistill.objectives.topk import topk_token_jsd_cost
from cdistill.rollout.source import Source


class GKD(Method):
    name = "gkd"
    trains_on_budget = False
    needs_teacher_hidden = True

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        if cfg.off_policy not in ("teacher", "reference"):
            raise ValueError(f"unknown gkd off_policy source {cfg.off_policy!r}; expected teacher or reference")
        self.last_source = Source.STUDENT
        # the coin is the method's own, seeded by the run's seed alone: every rank draws the same source at
        # every step (under FSDP generation is collective, and ranks sampling with different models would
        # hang), and it is saved in checkpoints
        self.rng = random.Random(self.seed)

    def source(self, step: int) -> Source:
        on_policy = self.rng.random() < self.cfg.on_policy_fraction
        self.last_source = Source.STUDENT if on_policy else Source(self.cfg.off_policy)
        return self.last_source

    def advantages(self, b: Scored):
        return torch.zeros_like(b.costs)

    def extra_loss(self, b: Scored, batch, denom):
        spec = batch.spec
        if batch.teacher_topk is not None:  # a served teacher: JSD on its top k tokens and the rest (a lower bound)
            jsd = topk_token_jsd_cost(batch.hidden, batch.student_weight, batch.teacher_topk, batch.mask,
                                      self.cfg.beta, spec.chunk, spec.vocab, spec.temperature)
        else:
            jsd = token_jsd_cost(batch.hidden, batch.student_weight, batch.teacher_hidden, batch.teacher_weight,
                                 batch.mask, self.cfg.beta, spec.chunk, spec.vocab, spec.temperature)
        return token_mean(jsd, batch.mask, denom)

    def after_step(self, b: Scored):
        return {"on_policy": float(self.last_source is Source.STUDENT)}

    def state_dict(self):
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}  # JSON, as summary.json holds it

    def load_state_dict(self, state):
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
