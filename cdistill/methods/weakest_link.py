"""``weakest_link``: a worst-case constraint on every prefix's mean teacher NLL, with an absorbing penalty.

Cost c_t = −log π_T(y_t|s_t), constraint ``prefix_mean`` (conf/method/weakest_link.yaml sets both). The
gradient is split in two: the immediate modified reward of token t is taken in exact expectation over the
vocabulary at each visited prefix, Σ_a π_θ(a|s_t) R̂(s_t, a) (chunked, differentiated directly), and only
the future return G_{t+1} (with the task reward) is sampled and weighs log π_θ(y_t|s_t).
"""

from cdistill.methods.base import Method, weight
from cdistill.objectives import (
    Scored,
    cmdp_rewards,
    future_return,
    terminal_reward,
    token_mean,
    weakest_link_exact_term,
)


class WeakestLink(Method):
    name = "weakest_link"
    group_relative = True
    needs_teacher_hidden = True
    follows_several_budgets = False
    several_budgets_refusal = ("weakest_link's exact term is the expected modified reward over one teacher's "
                               "distribution; with several budgets (constraints) it would need every teacher's at "
                               "every position: use cmdp, lagrangian or soft_penalty, or one constraint")

    def __init__(self, cfg, constraint, optim, **kwargs):
        super().__init__(cfg, constraint, optim, **kwargs)
        if constraint.cost != "teacher_nll" or constraint.kind != "prefix_mean":
            raise ValueError("method weakest_link needs constraint.cost=teacher_nll and constraint.kind=prefix_mean, "
                             f"got {constraint.cost} / {constraint.kind}")
        self.check_nonnegative("penalty", "exact_weight")
        self.informative = weight(self.cfg.informative, "informative")
        self.penalty_on = self.cfg.get("penalty_on", "first")

    def advantages(self, b: Scored):
        rewards = cmdp_rewards(b.task_reward, b.costs, b.mask, b.stats, self.cfg.penalty, self.informative,
                               self.penalty_on)
        violated = b.stats.violation_step >= 0
        task_part = terminal_reward(b.task_reward * (~violated).to(b.task_reward.dtype), b.mask)
        # the penalty / informative reward of token t itself is in the exact term: not sampled twice
        returns = future_return(rewards, rewards - task_part, b.mask)
        return self.normalize_returns(returns, b.mask, b.group_size)

    def extra_loss(self, b: Scored, batch, denom):
        exact = weakest_link_exact_term(
            batch.hidden, batch.student_weight, batch.teacher_hidden, batch.teacher_weight, b.costs[batch.rows],
            b.stats.absorbed[batch.rows], batch.mask, self.constraint.threshold, self.cfg.penalty,
            self.informative, batch.spec.chunk, batch.spec.vocab, batch.spec.temperature, self.penalty_on)
        # on the advantages' scale: divided by each completion's group scale like the sampled term
        return -self.cfg.exact_weight * token_mean(exact / self.scale[batch.rows, None], batch.mask, denom)

    def after_step(self, b: Scored):
        return {"absorbed_rate": float((b.stats.violation_step >= 0).float().mean())}

