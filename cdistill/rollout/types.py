"""What sampling returns, whichever engine drew it: below the samplers, so that each can return it without
importing another."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdistill.models.forward import Sequences


@dataclass
class Rollout:
    seq: Sequences
    texts: list[str]  # decoded completions, EOS and padding stripped
    group_size: int
    # [B, T] the log-prob the sampling engine drew each token with, when it is not the trainer's own
    # forward (vLLM); None for the HF backend, whose sampler is the trained model itself
    sampler_logp: torch.Tensor | None = None
