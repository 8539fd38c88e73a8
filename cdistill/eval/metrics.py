"""Summaries of a scored batch: the numbers that training logs and evaluation reports."""

from __future__ import annotations

import torch

from cdistill.objectives import ConstraintStats, Scored, token_mean
from cdistill.teachers import FIRST


def quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.double(), q)) if x.numel() else float("nan")


def rates(correct: torch.Tensor, stats: ConstraintStats, suffix: str = "") -> dict[str, torch.Tensor]:
    """Each completion's satisfaction and success under ``stats``: the constraint read at the end (C(y) <= d) and
    on every prefix (never exceeded: the Sauté reading, under which cmdp forfeits the reward); they differ when
    costs can be negative (logratio)."""
    satisfied, never = stats.satisfied, stats.violation_step < 0
    return {f"satisfaction_rate{suffix}": satisfied.double(), f"success_rate{suffix}": (correct & satisfied).double(),
            f"never_exceeded_rate{suffix}": never.double(),
            f"success_never_exceeded_rate{suffix}": (correct & never).double()}


def budget_names(b: Scored) -> list[str]:
    """Every constraint's name, the first one's first, in the order of ``Scored.all_stats``."""
    return [FIRST, *(o.name for o in b.others)]


def per_sample(b: Scored) -> dict[str, torch.Tensor]:
    """Each completion's value of the metrics that are means over completions: a batch's summary averages them,
    evaluation's per-family report sums them by family. With several budgets (``constraints``) the rates are joint
    (every budget met by the same completion) and each constraint's own follow as ``<metric>@<name>``;
    ``divergence_mean`` stays the first constraint's."""
    correct = b.task_reward > 0
    out = {"reward": b.task_reward, "divergence_mean": b.stats.value, **rates(correct, b.joint)}
    if b.others:
        for name, stats in zip(budget_names(b), b.all_stats(), strict=True):
            out[f"divergence_mean@{name}"] = stats.value
            out.update(rates(correct, stats, f"@{name}"))
    return out


def batch_summary(b: Scored) -> dict[str, float]:
    value = b.stats.value
    means = {k: float(v.mean()) for k, v in per_sample(b).items()}
    lengths = b.mask.sum(1).double()
    engine = {}
    if b.sampler_logp is not None:  # how far the rollout engine's log-probs are from the trainer's
        known = b.mask.bool() & torch.isfinite(b.sampler_logp)
        gap = (b.old_logp - b.sampler_logp).masked_fill(~known, 0.0)
        engine = {"sampler_logp_abs_diff": float(token_mean(gap.abs(), known)),
                  "sampler_ratio_max": float(gap.masked_fill(~known, float("-inf")).max().exp())
                  if known.any() else 1.0}
    return {**engine,
        "reward": means["reward"],
        "divergence_mean": means["divergence_mean"],
        "divergence_median": quantile(value, 0.5),
        "divergence_p90": quantile(value, 0.9),
        **{k: means[k] for k in ("satisfaction_rate", "success_rate", "never_exceeded_rate",
                                 "success_never_exceeded_rate")},
        "sampled_kl_per_token": float(token_mean(b.sampled_kl, b.mask)),
        "entropy": float(token_mean(b.entropy, b.mask)),
        "length_mean": float(lengths.mean()),
        "length_max": float(lengths.max()) if lengths.numel() else 0.0,
        **{k: v for k, v in means.items() if "@" in k},
    }
