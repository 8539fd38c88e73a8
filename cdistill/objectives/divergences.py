"""Divergence estimators on sampled tokens and full-vocabulary divergences on logit rows."""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimates of KL(p ‖ ref) from tokens sampled from p (Schulman's k1 / k2 / k3).

    With r = log ref − log p: k1 = −r (unbiased, can be negative), k2 = r²/2 (biased, low variance),
    k3 = e^r − 1 − r (unbiased, non-negative).
    """
    r = ref_logp - logp
    if kind == "k1":
        out = -r
    elif kind == "k2":
        out = 0.5 * r * r
    elif kind == "k3":
        out = torch.expm1(r) - r
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")
    return out * mask


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD(β) of GKD (Agarwal et al. 2024) per row of [n, V] logits.

    JSD(β) = β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M) with M = β p_T + (1 − β) p_S. The mixture form vanishes
    at both ends, so, as in GKD's reference code and TRL, β = 0 is the forward KL(p_T ‖ p_S) and β = 1
    the reverse KL(p_S ‖ p_T).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    ls = torch.log_softmax(student_logits.float(), dim=-1)
    lt = torch.log_softmax(teacher_logits.float(), dim=-1)
    if beta == 0.0:
        return (lt.exp() * (lt - ls)).sum(-1)
    if beta == 1.0:
        return (ls.exp() * (ls - lt)).sum(-1)
    lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), dim=0)
    kl_t = (lt.exp() * (lt - lm)).sum(-1)
    kl_s = (ls.exp() * (ls - lm)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of [n, V] logits."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1)
