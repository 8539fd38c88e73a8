"""``lagrangian``: maximise E[R] − λ (E[C] − d) with a learned multiplier λ ≥ 0.

λ follows the batch's mean C(y) (EMA-smoothed) by dual ascent or a PID controller, once per optimiser
step. It only targets the expectation E[C] ≤ d, not every sample: the contrast with ``cmdp``. The
combined return R − λ C is normalised once and divided by 1 + λ (its size does not grow with λ), so λ
keeps its meaning: the exchange rate between a unit of reward and a unit of cost.
"""

from cdistill.methods.base import Method
from cdistill.objectives import CONTROLLERS, Scored, constraint_stats, terminal_reward


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
        self.state = init(cfg.init)

    @property
    def lam(self) -> float:
        return self.state["lam"]

    def advantages(self, b: Scored):
        rewards = terminal_reward(b.task_reward, b.mask) - self.lam * b.stats.increments * b.mask
        return self.normalize(rewards, b.mask, b.group_size) / (1.0 + self.lam)

    def holds_cost(self):
        return self.lam > 0

    def cost_weights_set_by_prefix(self):
        return self.constraint.kind == "sum"

    def cost_in_return(self, b: Scored, rows, costs):
        c = self.constraint
        return self.lam / (1.0 + self.lam) * constraint_stats(costs, b.mask[rows], c.threshold, c.kind).value

    def after_step(self, b: Scored):
        measured = self.reduce_mean(float(b.stats.value.mean()))  # every rank's batch: one λ for all
        c, d = self.cfg, self.constraint.threshold
        if c.controller == "pid":
            self.state = self._update(self.state, measured, d, c.pid.kp, c.pid.ki, c.pid.kd, c.ema_decay, c.lam_max)
        else:
            self.state = self._update(self.state, measured, d, c.lr, c.ema_decay, c.lam_max)
        return {"lambda": self.lam}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)
