"""``lagrangian``: maximise E[R] − λ (E[C] − d) with a learned multiplier λ ≥ 0.

λ follows the batch's mean C(y) (EMA-smoothed) by dual ascent or a PID controller, once per optimiser
step. It only targets the expectation E[C] ≤ d, not every sample: the contrast with ``cmdp``. The
combined return R − λ C is normalised once and divided by 1 + λ (its size does not grow with λ), so λ
keeps its meaning: the exchange rate between a unit of reward and a unit of cost.

With several budgets (``constraints``) there is one multiplier per constraint, each driven by its own mean
C_k(y) against its own d_k with the same controller settings: the return is R − Σ_k λ_k C_k, divided by
1 + Σ_k λ_k.
"""

from cdistill.methods.base import Method
from cdistill.objectives import CONTROLLERS, Scored, constraint_stats, terminal_reward
from cdistill.teachers import FIRST


class Lagrangian(Method):
    name = "lagrangian"
    group_relative = True

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        if cfg.controller not in CONTROLLERS:
            raise ValueError(f"unknown multiplier controller {cfg.controller!r}; expected one of {sorted(CONTROLLERS)}")
        self.check_nonnegative("init", "lr")
        if not cfg.lam_max >= 0:  # inf: no cap on the multiplier
            raise ValueError(f"method.lam_max must be >= 0 (or inf), got {cfg.lam_max}")
        if not 0 <= cfg.ema_decay < 1:
            raise ValueError(f"method.ema_decay must be in [0, 1), got {cfg.ema_decay}")
        for gain, value in (cfg.get("pid") or {}).items() if cfg.controller == "pid" else ():
            if not value >= 0:
                raise ValueError(f"method.pid.{gain} must be >= 0, got {value}")
        init, self._update = CONTROLLERS[cfg.controller]
        self.constraints = (self.constraint, *(c for _, c in self.others))
        self.names = (FIRST, *(n for n, _ in self.others))
        self.states = [init(cfg.init) for _ in self.constraints]

    @property
    def state(self) -> dict:  # the first constraint's multiplier (the only one without ``constraints``)
        return self.states[0]

    @property
    def lam(self) -> float:
        return self.state["lam"]

    @property
    def lams(self) -> list[float]:
        return [s["lam"] for s in self.states]

    def advantages(self, b: Scored):
        if not self.others:
            rewards = terminal_reward(b.task_reward, b.mask) - self.lam * b.stats.increments * b.mask
            return self.normalize(rewards, b.mask, b.group_size) / (1.0 + self.lam)
        rewards = terminal_reward(b.task_reward, b.mask)
        for lam, s in zip(self.lams, b.all_stats(), strict=True):
            rewards = rewards - lam * s.increments * b.mask
        return self.normalize(rewards, b.mask, b.group_size) / (1.0 + sum(self.lams))

    def holds_cost(self):
        return any(lam > 0 for lam in self.lams)

    def cost_weights_set_by_prefix(self):
        return all(c.kind == "sum" for c in self.constraints)

    def cost_in_return(self, b: Scored, rows, costs):
        if not self.others:
            c = self.constraint
            return self.lam / (1.0 + self.lam) * constraint_stats(costs[0], b.mask[rows], c.threshold, c.kind).value
        total = 1.0 + sum(self.lams)
        return sum(lam / total * constraint_stats(x, b.mask[rows], c.threshold, c.kind).value
                   for lam, x, c in zip(self.lams, costs, self.constraints, strict=True))

    def after_step(self, b: Scored):
        c = self.cfg
        for i, (stats, constraint) in enumerate(zip(b.all_stats(), self.constraints, strict=True)):
            measured = self.reduce_mean(float(stats.value.mean()))  # every rank's batch: one λ for all
            d = constraint.threshold
            if c.controller == "pid":
                self.states[i] = self._update(self.states[i], measured, d, c.pid.kp, c.pid.ki, c.pid.kd, c.ema_decay,
                                              c.lam_max)
            else:
                self.states[i] = self._update(self.states[i], measured, d, c.lr, c.ema_decay, c.lam_max)
        if not self.others:
            return {"lambda": self.lam}
        return {"lambda": self.lam, **{f"lambda@{n}": lam for n, lam in zip(self.names, self.lams, strict=True)}}

    def state_dict(self):
        if not self.others:  # as every single-constraint run has saved it
            return dict(self.state)
        return {n: dict(s) for n, s in zip(self.names, self.states, strict=True)}

    def load_state_dict(self, state):
        if not self.others:
            self.states[0] = dict(state)
            return
        self.states = [dict(state[n]) for n in self.names]
