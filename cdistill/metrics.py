"""Summaries of a scored batch: the numbers that training logs and evaluation reports."""

from __future__ import annotations

import torch

from cdistill.methods.base import Scored
from cdistill.objectives import token_mean


def quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.double(), q)) if x.numel() else float("nan")


def batch_summary(b: Scored, extras: dict[str, torch.Tensor]) -> dict[str, float]:
    value = b.stats.value
    lengths = b.mask.sum(1).double()
    return {
        "reward": float(b.task_reward.mean()),
        "divergence_mean": float(value.mean()),
        "divergence_median": quantile(value, 0.5),
        "divergence_p90": quantile(value, 0.9),
        "satisfaction_rate": float(b.stats.satisfied.double().mean()),
        "success_rate": float(((b.task_reward > 0) & b.stats.satisfied).double().mean()),
        "sampled_kl_per_token": float(token_mean(extras["sampled_kl"], b.mask)),
        "entropy": float(token_mean(extras["entropy"], b.mask)),
        "length_mean": float(lengths.mean()),
        "length_max": float(lengths.max()) if lengths.numel() else 0.0,
    }
