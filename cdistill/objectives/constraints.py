"""Constraint statistics: C(y), its running value on prefixes, and where it is first violated.

The running statistic C_t is the value C would take if the completion ended after token t:

- ``sum``:          C_t = Σ_{i≤t} c_i                      C(y) = C_T
- ``mean``:         C_t = (1/t) Σ_{i≤t} c_i                C(y) = C_T
- ``prefix_mean``:  C_t = max_{k≤t} (1/k) Σ_{i≤k} c_i      C(y) = C_T

Its increments δ_t = C_t − C_{t−1} (C_0 = 0) sum to C(y), which lets reward shaping spread any of the
three over tokens. The Sauté budget z_t = d − C_t is exhausted (absorbing state) at the first t with
C_t > d for ``sum`` and ``prefix_mean``. For ``mean`` the constraint is on the whole completion, so a
violation can only be declared at its last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdistill.objectives.masks import last_token_onehot

KINDS = ("sum", "mean", "prefix_mean")


@dataclass
class ConstraintStats:
    running: torch.Tensor  # [B, T] C_t, zero at masked positions
    increments: torch.Tensor  # [B, T] δ_t, zero at masked positions; Σ_t δ_t = value
    value: torch.Tensor  # [B] C(y); 0 for an empty completion
    violation_step: torch.Tensor  # [B] long: first t with z_t < 0, or −1 when never violated
    absorbed: torch.Tensor  # [B, T] bool: valid positions t ≥ violation_step
    satisfied: torch.Tensor  # [B] bool: C(y) ≤ d (the constraint read at the end)
    peak: torch.Tensor  # [B] the largest C_t that counts (every prefix; only C(y) for ``mean``): the budget is
    #                     never exceeded on any prefix (the Sauté reading) iff peak ≤ d


def prefix_statistic(kind: str, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """C of a prefix from the sum and number of its costs, before ``prefix_mean`` takes the maximum over
    shorter prefixes: the sum, or the mean."""
    return total if kind == "sum" else total / count.clamp(min=1)


def running_step(kind: str, total: torch.Tensor, count: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """C_t one token at a time, from the running sum and count of costs and C_{t−1} (−inf before the first
    token): what a sampler that tracks the budget while it samples computes. ``constraint_stats`` gives the
    same C_t for whole completions at once."""
    value = prefix_statistic(kind, total, count)
    return torch.maximum(previous, value) if kind == "prefix_mean" else value


def constraint_stats(costs: torch.Tensor, mask: torch.Tensor, threshold: float, kind: str = "sum") -> ConstraintStats:
    if kind not in KINDS:
        raise ValueError(f"unknown constraint kind {kind!r}; expected one of {KINDS}")
    m = mask.bool()
    mf = m.to(costs.dtype)
    running = prefix_statistic(kind, (costs * mf).cumsum(dim=1), mf.cumsum(dim=1))
    if kind == "prefix_mean":
        running = running.masked_fill(~m, float("-inf")).cummax(dim=1).values
    running = running.masked_fill(~m, 0.0)

    last = last_token_onehot(m)
    value = (running * last).sum(dim=1)
    prev = torch.cat([torch.zeros_like(running[:, :1]), running[:, :-1]], dim=1)
    increments = (running - prev) * mf

    over = (running > threshold) & m
    if kind == "mean":
        over = over & last
    any_over = over.any(dim=1)
    first = over.long().argmax(dim=1)
    violation_step = torch.where(any_over, first, torch.full_like(first, -1))
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    absorbed = any_over.unsqueeze(1) & (pos >= violation_step.unsqueeze(1)) & m
    peak = value if kind == "mean" else torch.maximum(running.masked_fill(~m, float("-inf")).amax(dim=1), value)
    return ConstraintStats(
        running=running,
        increments=increments,
        value=value,
        violation_step=violation_step,
        absorbed=absorbed,
        satisfied=value <= threshold,
        peak=peak,
    )



def joint_stats(stats: list[ConstraintStats], mask: torch.Tensor) -> ConstraintStats:
    """Several budgets read as one absorbing constraint: violated at the first token that violates any of them,
    satisfied (at the end) when all are. ``violation_step``, ``absorbed`` and ``satisfied`` are joint; the value
    fields (``running``, ``increments``, ``value``, ``peak``) stay the first constraint's, since values of
    different costs do not add up to one value. One constraint is returned as it is."""
    if len(stats) == 1:
        return stats[0]
    first = stats[0]
    steps = torch.stack([s.violation_step for s in stats])  # [K, B]
    any_over = (steps >= 0).any(dim=0)
    earliest = steps.masked_fill(steps < 0, mask.shape[1]).amin(dim=0)
    violation_step = torch.where(any_over, earliest, torch.full_like(earliest, -1))
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    absorbed = any_over.unsqueeze(1) & (pos >= violation_step.unsqueeze(1)) & mask.bool()
    satisfied = torch.stack([s.satisfied for s in stats]).all(dim=0)
    return ConstraintStats(running=first.running, increments=first.increments, value=first.value,
                           violation_step=violation_step, absorbed=absorbed, satisfied=satisfied, peak=first.peak)
