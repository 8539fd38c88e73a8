"""``sft``: supervised fine-tuning on the dataset's reference solutions (next-token NLL, token mean)."""

import torch

from cdistill.methods.base import Method, Scored
from cdistill.objectives import token_mean


class SFT(Method):
    name = "sft"

    def source(self, step: int) -> str:
        return "reference"

    def advantages(self, b: Scored):
        return torch.zeros_like(b.costs)

    def extra_loss(self, b: Scored, live, denom):
        return token_mean(-live.logp, live.mask, denom)
