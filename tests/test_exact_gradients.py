"""Every RL method's update follows the gradient of its stated objective, checked exactly by enumeration.

A tabular student (one row of logits per prefix) over 3 tokens with a horizon of 3, a fixed tabular teacher
and a verifier on the last token: every completion is enumerated with its probability. For each method and
cost, the expectation over completions of the gradient of the loss the loop builds (``train.micro_batch_loss``
on the method's own advantages, raw returns: ``optim.adv_baseline=none``, ``adv_scale=none``, plus the
method's extra terms) must equal −∇J / H, J the method's objective computed exactly with autograd and H the
tokens per completion (the loss is a token mean).
"""

import itertools
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cdistill.methods import build_method
from cdistill.models.forward import CompletionForward
from cdistill.objectives import COSTS, MicroBatch, Scored, ScoringSpec, constraint_stats
from cdistill.train import micro_batch_loss

V, H = 3, 3
STATES = sum(V**t for t in range(H))  # one per prefix of length < H
COMPLETIONS = list(itertools.product(range(V), repeat=H))


def state(y, t: int) -> int:
    """The index of the prefix y_<t: prefixes numbered by length, then in base V."""
    return sum(V**k for k in range(t)) + sum(y[k] * V ** (t - 1 - k) for k in range(t))


def reward(y) -> float:
    return float(y[-1] == 0)


class Head:
    """What the loop reads of a model here: its output embedding (hidden states are one-hot states)."""

    def __init__(self, weight):
        self.weight = weight

    def get_output_embeddings(self):
        return self


def tables():
    g = torch.Generator().manual_seed(5)
    student = torch.randn(STATES, V, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher = torch.randn(STATES, V, generator=g, dtype=torch.float64)
    return student, teacher


def brute_costs(name, y, student, teacher):
    """[H] c_t of completion y, differentiable in the student's table."""
    out = []
    for t in range(H):
        ls, lt = torch.log_softmax(student[state(y, t)], -1), torch.log_softmax(teacher[state(y, t)], -1)
        out.append({"logratio": ls[y[t]] - lt[y[t]], "teacher_nll": -lt[y[t]],
                    "token_kl": (ls.exp() * (ls - lt)).sum()}[name])
    return torch.stack(out)


def brute_running(c, kind):
    sums = c.cumsum(0)
    if kind == "sum":
        return sums
    means = sums / torch.arange(1, H + 1, dtype=c.dtype)
    return means if kind == "mean" else torch.cummax(means, 0).values


def objective(name, cfg, cost, kind, d):
    """f(y, c): the return the method maximises, from the brute-force costs (θ-dependent)."""

    def sauté(y, c):  # cmdp's and weakest_link's modified reward
        over = [(t, bool(v > d)) for t, v in enumerate(brute_running(c.detach(), kind))]
        if kind == "mean":
            over = [(H - 1, over[-1][1])]
        tau = next((t for t, o in over if o), None)
        if tau is None:
            return torch.tensor(reward(y), dtype=c.dtype)
        rest = float(cfg["informative"]) * c[tau + 1:].sum()
        every = cfg.get("penalty_on", "first") == "every"  # Sauté's −n on every absorbed token
        return -cfg["penalty"] * (H - tau if every else 1) - rest

    lam = cfg.get("init", 0.0)
    return {
        "grpo": lambda y, c: torch.tensor(reward(y), dtype=c.dtype),
        "soft_penalty": lambda y, c: reward(y) - cfg.get("penalty", 0.0) * brute_running(c, kind)[-1],
        "lagrangian": lambda y, c: (reward(y) - lam * brute_running(c, kind)[-1]) / (1 + lam),
        "cmdp": sauté,
        "weakest_link": sauté,
        "opd": lambda y, c: -c.sum(),
    }[name]


def exact_gradient(name, cfg, cost, kind, d):
    student, teacher = tables()
    f = objective(name, cfg, cost, kind, d)
    total = torch.zeros((), dtype=torch.float64)
    for y in COMPLETIONS:
        logp = sum(torch.log_softmax(student[state(y, t)], -1)[y[t]] for t in range(H))
        total = total + logp.exp() * f(y, brute_costs(cost, y, student, teacher))
    return torch.autograd.grad(total, student)[0]


def batch_of(ys, method, cost, kind, d, student, teacher, optim):
    """The scored batch, the student's forward and the loop's view of the run for completions ``ys``."""
    spec = ScoringSpec(temperature=1.0, chunk=8, vocab=V)
    mask = torch.ones(len(ys), H, dtype=torch.bool)
    states = torch.tensor([[state(y, t) for t in range(H)] for y in ys])
    hidden = torch.nn.functional.one_hot(states, STATES).double()
    tokens = torch.tensor(ys)[..., None]
    logp = torch.log_softmax(student[states], -1).gather(-1, tokens)[..., 0]
    t_logp = torch.log_softmax(teacher[states], -1).gather(-1, tokens)[..., 0]
    costs = COSTS[cost].per_token(student_logp=logp.detach(), teacher_logp=t_logp, mask=mask, student_hidden=hidden,
                                  student_weight=student.detach().T, teacher_hidden=hidden, teacher_weight=teacher.T,
                                  spec=spec)
    scored = Scored(mask=mask, task_reward=torch.tensor([reward(y) for y in ys], dtype=torch.float64),
                    old_logp=logp.detach(), teacher_logp=t_logp, costs=costs,
                    stats=constraint_stats(costs, mask, d, kind), group_size=len(ys), teacher_hidden=hidden)
    run_cfg = OmegaConf.create({"optim": optim, "rollout": {"temperature": 1.0}, "scoring": {"chunk": 8}})
    run = SimpleNamespace(cfg=run_cfg, method=method,
                          parts=SimpleNamespace(student=Head(student.T), teacher=Head(teacher.T), vocab=V))
    return scored, CompletionForward(logp, None, hidden), run


def build(name, cfg, cost, kind, d, scale="none", baseline="none", pathwise=True):
    constraint = OmegaConf.create({"cost": cost, "kind": kind, "threshold": d, "pathwise_gradient": pathwise})
    optim = OmegaConf.create({"adv_scale": scale, "adv_baseline": baseline, "clip_low": 0.2, "clip_high": 0.2})
    return build_method(OmegaConf.create({"name": name, **cfg}), constraint, optim), optim


def expected_update(name, cfg, cost, kind, d, pathwise=True):
    """Σ_y p(y) ∇θ L(y): the loss the loop builds for the one completion y, in expectation."""
    student, teacher = tables()
    total = torch.zeros_like(student)
    for y in COMPLETIONS:
        method, optim = build(name, cfg, cost, kind, d, pathwise=pathwise)
        scored, forward, run = batch_of([y], method, cost, kind, d, student, teacher, optim)
        loss, _ = micro_batch_loss(run, scored, rows=torch.arange(1), forward=forward,
                                   advantages=method.advantages(scored), importance=None,
                                   denom=torch.tensor(float(H), dtype=torch.float64))
        total += forward.logp.detach().sum().exp() * torch.autograd.grad(loss, student)[0]
    return total


CASES = [
    ("grpo", {}, "logratio", "sum", 10.0),
    ("soft_penalty", {"penalty": 0.3}, "logratio", "sum", 10.0),
    ("soft_penalty", {"penalty": 0.3}, "teacher_nll", "sum", 10.0),
    ("soft_penalty", {"penalty": 0.3}, "token_kl", "sum", 10.0),  # the pathwise term (finding 5)
    ("soft_penalty", {"penalty": 0.3}, "token_kl", "mean", 10.0),
    ("lagrangian", {"controller": "dual_ascent", "init": 0.5, "lr": 0.0, "ema_decay": 0.0, "lam_max": 10.0},
     "token_kl", "sum", 10.0),
    ("lagrangian", {"controller": "dual_ascent", "init": 0.5, "lr": 0.0, "ema_decay": 0.0, "lam_max": 10.0},
     "logratio", "sum", 10.0),
    ("cmdp", {"penalty": 1.0, "informative": True}, "logratio", "sum", 0.5),
    ("cmdp", {"penalty": 1.0, "informative": True}, "token_kl", "sum", 0.9),  # the pathwise term
    ("cmdp", {"penalty": 1.0, "informative": True}, "teacher_nll", "sum", 3.0),
    ("cmdp", {"penalty": 2.0, "informative": False}, "token_kl", "sum", 0.9),
    ("weakest_link", {"penalty": 1.0, "informative": True, "exact_weight": 1.0}, "teacher_nll", "prefix_mean", 1.5),
    ("opd", {"estimator": "sampled", "returns": "to_go"}, "logratio", "sum", 10.0),
    ("opd", {"estimator": "sampled", "returns": "to_go"}, "token_kl", "sum", 10.0),
    # a cost's weight that the prefix does not decide (the worst prefix): logratio's pathwise term is needed
    ("soft_penalty", {"penalty": 0.3}, "logratio", "prefix_mean", 10.0),
    ("lagrangian", {"controller": "dual_ascent", "init": 0.5, "lr": 0.0, "ema_decay": 0.0, "lam_max": 10.0},
     "logratio", "prefix_mean", 10.0),
    ("soft_penalty", {"penalty": 0.3}, "token_kl", "prefix_mean", 10.0),
    ("cmdp", {"penalty": 1.0, "informative": True}, "token_kl", "prefix_mean", 0.5),
    ("cmdp", {"penalty": 1.0, "informative": True}, "logratio", "mean", 0.3),
    ("weakest_link", {"penalty": 1.0, "informative": False, "exact_weight": 1.0}, "teacher_nll", "prefix_mean", 1.5),
    # the informative reward as a weight, and Sauté's absorbing reward (−n on every absorbed token)
    ("cmdp", {"penalty": 1.0, "informative": 0.4}, "logratio", "sum", 0.5),
    ("cmdp", {"penalty": 1.0, "informative": 0.4}, "token_kl", "sum", 0.9),
    ("cmdp", {"penalty": 0.7, "informative": 0.4, "penalty_on": "every"}, "logratio", "sum", 0.5),
    ("cmdp", {"penalty": 0.7, "informative": 1.0, "penalty_on": "every"}, "token_kl", "sum", 0.9),
    ("weakest_link", {"penalty": 1.0, "informative": 0.4, "penalty_on": "every", "exact_weight": 1.0},
     "teacher_nll", "prefix_mean", 1.5),
]


@pytest.mark.parametrize(("name", "cfg", "cost", "kind", "d"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_the_expected_update_is_the_gradient_of_the_methods_objective(name, cfg, cost, kind, d):
    want = -exact_gradient(name, cfg, cost, kind, d) / H
    assert want.abs().max() > 1e-3  # a case that moves the student
    # float64 throughout except the chunked full-vocabulary terms (float32): agreement to float32 rounding
    torch.testing.assert_close(expected_update(name, cfg, cost, kind, d), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", [c for c in CASES if (c[2] == "token_kl" or c[3] == "prefix_mean")
                                  and c[2] != "teacher_nll" and c[1].get("informative", True)],
                         ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_without_the_pathwise_term_a_token_kl_return_is_not_followed(case):
    # what every method but cmdp did before: the score-function part alone misses ∇θ of the cost (for
    # logratio too when the prefix does not decide the cost's weight)
    name, cfg, cost, kind, d = case
    want = -exact_gradient(name, cfg, cost, kind, d) / H
    assert (expected_update(name, cfg, cost, kind, d, pathwise=False) - want).abs().max() > 1e-3


def test_the_cases_reach_both_sides_of_each_budget():
    # cmdp and weakest_link must see violating and satisfying completions, or the penalty is never tested
    student, teacher = tables()
    for name, _, cost, kind, d in CASES:
        if name in ("cmdp", "weakest_link"):
            running = [brute_running(brute_costs(cost, y, student, teacher).detach(), kind) for y in COMPLETIONS]
            over = [bool((r > d).any()) for r in running]
            assert any(over) and not all(over), (name, cost)
            # and some violate before their last token, where the informative −c_t applies
            assert kind == "mean" or any(bool((r[:-1] > d).any()) for r in running), (name, cost)


def myopic_kl_gradient():
    """∇θ Σ_y p(y) Σ_t KL(s_t) with the state distribution p held fixed: on-policy distillation's objective."""
    student, teacher = tables()
    total = torch.zeros((), dtype=torch.float64)
    for y in COMPLETIONS:
        p = sum(torch.log_softmax(student[state(y, t)], -1)[y[t]] for t in range(H)).exp().detach()
        total = total + p * brute_costs("token_kl", y, student, teacher).sum()
    return torch.autograd.grad(total, student)[0]


@pytest.mark.parametrize("estimator", [{"estimator": "sampled", "returns": "token"}, {"estimator": "full"}])
def test_opd_per_token_estimators_follow_the_kl_at_each_visited_prefix(estimator):
    # A_t = −c_t (logratio) and the exact per-position KL differentiated directly have the same expectation:
    # the gradient of Σ_t KL(s_t) over the visited prefixes, their distribution held fixed
    cost = "logratio" if estimator["estimator"] == "sampled" else "token_kl"
    cfg = {"returns": "token", **estimator}
    torch.testing.assert_close(expected_update("opd", cfg, cost, "sum", 10.0), myopic_kl_gradient() / H,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", [
    ("cmdp", {"penalty": 1.0, "informative": True}, "token_kl", "sum", 0.9),
    ("soft_penalty", {"penalty": 0.3}, "token_kl", "sum", 10.0),
    ("weakest_link", {"penalty": 1.0, "informative": True, "exact_weight": 1.0}, "teacher_nll", "prefix_mean", 1.5),
], ids=lambda c: c[0])
def test_extra_terms_are_divided_by_each_completions_advantage_scale(case):
    # under optim.adv_scale=std a completion's advantages are divided by its group's σ: its pathwise / exact
    # term must be too, or the sum of the two is the gradient of no objective
    name, cfg, cost, kind, d = case
    student, teacher = tables()
    ys = [COMPLETIONS[i] for i in (0, 5, 13, 26)]  # a group of 4 with different returns
    terms, sigma = {}, {}
    for scale in ("std", "none"):
        method, optim = build(name, cfg, cost, kind, d, scale=scale, baseline="group")
        scored, forward, _ = batch_of(ys, method, cost, kind, d, student, teacher, optim)
        method.advantages(scored)
        batch = MicroBatch(torch.arange(4), forward.logp, forward.hidden, scored.mask, scored.teacher_logp,
                           scored.teacher_hidden, student.T, teacher.T, ScoringSpec(1.0, 8, V))
        terms[scale] = torch.autograd.grad(method.extra_loss(scored, batch, torch.tensor(12.0)), student)[0]
        sigma[scale] = method.scale
    assert abs(float(sigma["std"][0]) - 1.0) > 0.1 and terms["none"].abs().max() > 1e-4
    torch.testing.assert_close(terms["std"], terms["none"] / sigma["std"][0])
