"""Lagrange-multiplier controllers. State is a plain dict of floats, so it serialises to JSON.

Both see one measurement per optimiser step, Ĉ (the batch's mean C(y)), smoothed by an EMA, and keep
λ in [0, λ_max].
"""

from __future__ import annotations

import math


def _ema(prev: float | None, x: float, decay: float) -> float:
    return x if prev is None else decay * prev + (1.0 - decay) * x


def _clip(x: float, hi: float) -> float:
    return min(max(x, 0.0), hi)


def dual_ascent_init(init: float = 0.0) -> dict:
    return {"lam": float(init), "cost_ema": None}


def dual_ascent_update(
    state: dict, measured_cost: float, threshold: float, lr: float, ema_decay: float = 0.9, lam_max: float = 100.0
) -> dict:
    """λ ← clip(λ + η (Ĉ − d), 0, λ_max): λ grows while the smoothed cost is over budget, shrinks below."""
    if not math.isfinite(measured_cost):
        return dict(state)
    ema = _ema(state["cost_ema"], measured_cost, ema_decay)
    return {"lam": _clip(state["lam"] + lr * (ema - threshold), lam_max), "cost_ema": ema}


def pid_init(init: float = 0.0) -> dict:
    return {"lam": float(init), "cost_ema": None, "integral": 0.0, "prev_cost": None}


def pid_update(
    state: dict,
    measured_cost: float,
    threshold: float,
    kp: float,
    ki: float,
    kd: float,
    ema_decay: float = 0.9,
    lam_max: float = 100.0,
) -> dict:
    """PID Lagrangian (Stooke, Achiam & Abbeel 2020, their Algorithm 2).

    The integral takes the raw error, P and D the smoothed cost Ĉ (EMA): I ← clip(I + C − d, 0, λ_max / K_i);
    e = Ĉ − d; ∂ = max(0, Ĉ − Ĉ_prev); λ = clip(K_p e + K_i I + K_d ∂, 0, λ_max). The derivative term reacts to
    a rising cost before the integral has built up. Anti-windup: the integral stops where K_i I alone reaches
    λ_max, so after a long spell over budget λ falls as soon as the cost does, instead of first unwinding an
    integral that kept growing while λ sat at its maximum.
    """
    if not math.isfinite(measured_cost):
        return dict(state)
    ema = _ema(state["cost_ema"], measured_cost, ema_decay)
    err = ema - threshold
    integral = max(0.0, state["integral"] + measured_cost - threshold)
    if ki > 0:
        integral = min(integral, lam_max / ki)
    deriv = 0.0 if state["prev_cost"] is None else max(0.0, ema - state["prev_cost"])
    lam = _clip(kp * err + ki * integral + kd * deriv, lam_max)
    return {"lam": lam, "cost_ema": ema, "integral": integral, "prev_cost": ema}


CONTROLLERS = {
    "dual_ascent": (dual_ascent_init, dual_ascent_update),
    "pid": (pid_init, pid_update),
}
