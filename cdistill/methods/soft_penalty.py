"""``soft_penalty``: the soft-Lagrangian baseline (GKD-GRPO / KDRL style), reward R − λ C(y), λ fixed.

With several budgets (``constraints``) the reward is R − Σ_k λ_k C_k(y), one fixed weight per constraint:
``method.penalty`` for each, unless ``method.penalties.<name>`` gives its own (the first constraint is named
``teacher``).
"""

from cdistill.methods.base import Method
from cdistill.objectives import Scored, constraint_stats, soft_penalty_rewards
from cdistill.teachers import FIRST


class SoftPenalty(Method):
    name = "soft_penalty"
    group_relative = True

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        self.check_nonnegative("penalty")
        own = dict(cfg.get("penalties") or {})
        for name, value in own.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"method.penalties.{name} must be a finite number >= 0, got {value!r}")
        names = {FIRST, *(n for n, _ in self.others)}
        unknown = sorted(set(own) - names)
        if unknown:
            raise ValueError(f"method.penalties.{unknown[0]} names no constraint (the constraints are "
                             f"{', '.join(sorted(names))})")
        self.penalties = [float(own.get(n, cfg.penalty)) for n in (FIRST, *(n for n, _ in self.others))]
    trains_on_budget = False

    def advantages(self, b: Scored):
        rewards = soft_penalty_rewards(b.task_reward, b.stats, b.mask, self.penalties[0])
        for w, s in zip(self.penalties[1:], b.all_stats()[1:], strict=True):
            rewards = rewards - w * s.increments.detach() * b.mask
        return self.normalize(rewards, b.mask, b.group_size)

    def holds_cost(self):
        return any(w != 0 for w in self.penalties)

    def cost_weights_set_by_prefix(self):
        return all(c.kind == "sum" for c in (self.constraint, *(c for _, c in self.others)))

    def cost_in_return(self, b: Scored, rows, costs):
        cs = (self.constraint, *(c for _, c in self.others))
        if not self.others:
            c = self.constraint
            return self.penalties[0] * constraint_stats(costs[0], b.mask[rows], c.threshold, c.kind).value
        return sum(w * constraint_stats(x, b.mask[rows], c.threshold, c.kind).value
                   for w, x, c in zip(self.penalties, costs, cs, strict=True))
