"""``sft``: supervised fine-tuning on the dataset's reference solutions (next-token NLL, token mean)."""

import torch

from cdistill.methods.base import Method
from cdistill.objectives import Scored, token_mean
from cdistill.rollout.source import Source


class SFT(Method):
    name = "sft"
    trains_on_budget = False

    def source(self, step: int) -> Source:
        return Source.REFERENCE

    def advantages(self, b: Scored):
        return torch.zeros_like(b.costs)

    def extra_loss(self, b: Scored, batch, denom):
        return token_mean(-batch.logp, batch.mask, denom)
