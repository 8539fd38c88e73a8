"""The optimiser and learning-rate schedule every training here uses (RL runs and the embedded models' SFT)."""

from __future__ import annotations

import math

import torch


def lr_lambda(warmup: int, total: int, schedule: str):
    """Linear warm-up, then constant or cosine decay to 10%."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def build_optimizer(o, model) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (a LoRA student's adapter only), from ``optim``."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                             weight_decay=o.weight_decay, betas=tuple(o.betas))


def build_scheduler(optimizer, o) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule counts optimiser steps: ``inner_epochs`` of them per training step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup, o.steps * o.inner_epochs, o.schedule))
