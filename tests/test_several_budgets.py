"""Several budgets, one per teacher (``constraints``): the joint constraint, every method's objective with two
budgets checked exactly by enumeration, what each method refuses, and what a run records per constraint."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import ragged_mask
from helpers import tiny_cfg
from omegaconf import OmegaConf
from test_exact_gradients import (
    COMPLETIONS,
    STATES,
    H,
    Head,
    V,
    brute_costs,
    brute_running,
    reward,
    state,
    tables,
)

from cdistill.config import validate
from cdistill.eval.metrics import batch_summary
from cdistill.methods import build_method
from cdistill.models.forward import CompletionForward
from cdistill.objectives import COSTS, Budget, Scored, ScoringSpec, constraint_stats, joint_stats
from cdistill.schema import ConfigError
from cdistill.train import micro_batch_loss

# ---------------------------------------------------------------------------------------------------------------
# the joint constraint


@pytest.mark.parametrize("kinds", [("sum", "sum"), ("sum", "prefix_mean"), ("mean", "sum"), ("prefix_mean", "mean")])
def test_joint_stats_absorb_at_the_first_budget_broken_and_are_satisfied_when_all_are(kinds):
    g = torch.Generator().manual_seed(3)
    mask = ragged_mask([7, 3, 0, 5, 7, 1], 7)
    costs = [torch.randn(6, 7, generator=g, dtype=torch.float64) * mask for _ in kinds]
    thresholds = (0.4, 0.9)
    stats = [constraint_stats(c, mask, d, k) for c, d, k in zip(costs, thresholds, kinds, strict=True)]
    joint = joint_stats(stats, mask)
    for b in range(6):
        steps = [int(s.violation_step[b]) for s in stats if s.violation_step[b] >= 0]
        first = min(steps) if steps else -1
        assert int(joint.violation_step[b]) == first
        n = int(mask[b].sum())
        want = [first >= 0 and t >= first and t < n for t in range(7)]
        assert joint.absorbed[b].tolist() == want
        assert bool(joint.satisfied[b]) == all(bool(s.satisfied[b]) for s in stats)
    assert joint.value is stats[0].value  # the values stay the first constraint's
    assert any(len({int(s.violation_step[b]) for s in stats}) > 1 for b in range(6))  # the budgets disagree


def test_one_budget_is_its_own_joint():
    mask = ragged_mask([4, 2], 4)
    s = constraint_stats(torch.ones(2, 4) * mask, mask, 1.5)
    assert joint_stats([s], mask) is s


# ---------------------------------------------------------------------------------------------------------------
# every method that takes two budgets follows the gradient of its two-budget objective, exactly

def second_teacher():
    g = torch.Generator().manual_seed(11)
    return torch.randn(STATES, V, generator=g, dtype=torch.float64) * 2.0


def two_budget_objective(name, cfg, budgets):
    """f(y, [c1, c2]): the return the method maximises with two budgets ``budgets`` = [(cost, kind, d), ...]."""

    def sauté(y, cs):
        over = []
        for c, (_, kind, d) in zip(cs, budgets, strict=True):
            running = brute_running(c.detach(), kind)
            ts = [H - 1] if kind == "mean" else range(H)
            over += [t for t in ts if running[t] > d]
        if not over:
            return torch.tensor(reward(y), dtype=torch.float64)
        tau = min(over)
        rest = float(cfg["informative"]) * sum(c[tau + 1:].sum() for c in cs)
        return -cfg["penalty"] * (H - tau if cfg.get("penalty_on", "first") == "every" else 1) - rest

    def total_cost(cs, weights):
        return sum(w * brute_running(c, kind)[-1] for w, c, (_, kind, _) in zip(weights, cs, budgets, strict=True))

    lams = cfg.get("lams", [cfg.get("init", 0.0)] * 2)
    penalties = [cfg["penalties"].get(n, cfg["penalty"]) for n in ("teacher", "other")] if name == "soft_penalty" \
        else None
    return {
        "grpo": lambda y, cs: torch.tensor(reward(y), dtype=torch.float64),
        "soft_penalty": lambda y, cs: reward(y) - total_cost(cs, penalties),
        "lagrangian": lambda y, cs: (reward(y) - total_cost(cs, lams)) / (1 + sum(lams)),
        "cmdp": sauté,
        "opd": lambda y, cs: -cs[0].sum(),  # trains on the first teacher; the further budget is only measured
    }[name]


def two_budget_exact_gradient(name, cfg, budgets):
    student, teacher = tables()
    teachers = (teacher, second_teacher())
    f = two_budget_objective(name, cfg, budgets)
    total = torch.zeros((), dtype=torch.float64)
    for y in COMPLETIONS:
        logp = sum(torch.log_softmax(student[state(y, t)], -1)[y[t]] for t in range(H))
        cs = [brute_costs(cost, y, student, t) for (cost, _, _), t in zip(budgets, teachers, strict=True)]
        total = total + logp.exp() * f(y, cs)
    return torch.autograd.grad(total, student)[0]


def two_budget_method(name, cfg, budgets):
    (c1, k1, d1), (c2, k2, d2) = budgets
    first = OmegaConf.create({"cost": c1, "kind": k1, "threshold": d1, "pathwise_gradient": True})
    other = OmegaConf.create({"teacher": "other", "cost": c2, "kind": k2, "threshold": d2})
    optim = OmegaConf.create({"adv_scale": "none", "adv_baseline": "none", "clip_low": 0.2, "clip_high": 0.2})
    own = {k: v for k, v in cfg.items() if k != "lams"}
    method = build_method(OmegaConf.create({"name": name, **own}), first, optim, others=[("other", other)])
    if "lams" in cfg:  # multipliers held at given values, as a run holds them within a step
        for s, lam in zip(method.states, cfg["lams"], strict=True):
            s["lam"] = lam
    return method, optim


def two_budget_expected_update(name, cfg, budgets):
    student, teacher = tables()
    teachers = (teacher, second_teacher())
    spec = ScoringSpec(temperature=1.0, chunk=8, vocab=V)
    total = torch.zeros_like(student)
    for y in COMPLETIONS:
        method, optim = two_budget_method(name, cfg, budgets)
        mask = torch.ones(1, H, dtype=torch.bool)
        states = torch.tensor([[state(y, t) for t in range(H)]])
        hidden = torch.nn.functional.one_hot(states, STATES).double()
        tokens = torch.tensor([y])[..., None]
        logp = torch.log_softmax(student[states], -1).gather(-1, tokens)[..., 0]
        t_logps = [torch.log_softmax(t[states], -1).gather(-1, tokens)[..., 0] for t in teachers]
        costs = [COSTS[c].per_token(student_logp=logp.detach(), teacher_logp=tl, mask=mask, student_hidden=hidden,
                                    student_weight=student.detach().T, teacher_hidden=hidden,
                                    teacher_weight=teacher.T, spec=spec)
                 for (c, _, _), tl in zip(budgets, t_logps, strict=True)]
        stats = [constraint_stats(c, mask, d, k) for c, (_, k, d) in zip(costs, budgets, strict=True)]
        scored = Scored(mask=mask, task_reward=torch.tensor([reward(y)], dtype=torch.float64), old_logp=logp.detach(),
                        teacher_logp=t_logps[0], costs=costs[0], stats=stats[0], group_size=1, teacher_hidden=hidden,
                        others=(Budget("other", t_logps[1], costs[1], stats[1]),))
        run = SimpleNamespace(cfg=OmegaConf.create({"optim": optim, "rollout": {"temperature": 1.0},
                                                    "scoring": {"chunk": 8}}), method=method,
                              parts=SimpleNamespace(student=Head(student.T), teacher=Head(teacher.T), vocab=V))
        forward = CompletionForward(logp, None, hidden)
        loss, _ = micro_batch_loss(run, scored, rows=torch.arange(1), forward=forward,
                                   advantages=method.advantages(scored), importance=None,
                                   denom=torch.tensor(float(H), dtype=torch.float64))
        total += logp.detach().sum().exp() * torch.autograd.grad(loss, student)[0]
    return total


TWO_BUDGET_CASES = [
    ("grpo", {}, [("logratio", "sum", 1.0), ("logratio", "sum", 1.0)]),
    ("cmdp", {"penalty": 1.0, "informative": 0.5}, [("logratio", "sum", 0.3), ("logratio", "sum", 3.0)]),
    ("cmdp", {"penalty": 1.0, "informative": 1.0}, [("logratio", "sum", 0.3), ("teacher_nll", "sum", 3.0)]),
    ("cmdp", {"penalty": 0.7, "informative": 0.4, "penalty_on": "every"},
     [("teacher_nll", "sum", 3.0), ("logratio", "sum", 0.5)]),
    ("cmdp", {"penalty": 1.0, "informative": 0.0}, [("logratio", "mean", 0.3), ("logratio", "sum", 3.0)]),
    ("soft_penalty", {"penalty": 0.3, "penalties": {"other": 0.7}},
     [("logratio", "sum", 1.0), ("logratio", "sum", 1.0)]),
    # a weight the prefix does not decide (the worst prefix): the pathwise term of each budget is needed
    ("soft_penalty", {"penalty": 0.3, "penalties": {}}, [("logratio", "sum", 1.0), ("logratio", "prefix_mean", 1.0)]),
    ("soft_penalty", {"penalty": 0.3, "penalties": {"teacher": 0.0}},
     [("logratio", "sum", 1.0), ("teacher_nll", "sum", 1.0)]),
    ("lagrangian", {"controller": "dual_ascent", "init": 0.0, "lr": 0.0, "ema_decay": 0.0, "lam_max": 10.0,
                    "lams": [0.5, 1.5]}, [("logratio", "sum", 1.0), ("logratio", "sum", 1.0)]),
    ("lagrangian", {"controller": "dual_ascent", "init": 0.0, "lr": 0.0, "ema_decay": 0.0, "lam_max": 10.0,
                    "lams": [0.0, 0.8]}, [("logratio", "sum", 1.0), ("logratio", "prefix_mean", 1.0)]),
    # the first budget's token_kl (its pathwise term) beside a further sampled budget
    ("soft_penalty", {"penalty": 0.3, "penalties": {"other": 0.5}},
     [("token_kl", "sum", 1.0), ("logratio", "sum", 1.0)]),
    ("cmdp", {"penalty": 1.0, "informative": 1.0}, [("token_kl", "sum", 0.9), ("logratio", "sum", 3.0)]),
    ("lagrangian", {"controller": "dual_ascent", "init": 0.0, "lr": 0.0, "ema_decay": 0.0, "lam_max": 10.0,
                    "lams": [0.4, 0.7]}, [("token_kl", "mean", 1.0), ("teacher_nll", "sum", 1.0)]),
    ("opd", {"estimator": "sampled", "returns": "to_go"}, [("logratio", "sum", 1.0), ("logratio", "sum", 1.0)]),
]


@pytest.mark.parametrize(("name", "cfg", "budgets"), TWO_BUDGET_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TWO_BUDGET_CASES)])
def test_with_two_budgets_the_expected_update_is_the_gradient_of_the_methods_objective(name, cfg, budgets):
    want = -two_budget_exact_gradient(name, cfg, budgets) / H
    assert want.abs().max() > 1e-3
    # float64 throughout except the chunked full-vocabulary terms (float32): agreement to float32 rounding
    torch.testing.assert_close(two_budget_expected_update(name, cfg, budgets), want, rtol=1e-5, atol=1e-7)


def test_the_two_budget_cmdp_cases_see_each_budget_broken_first():
    # the joint absorption is only tested if, among the enumerated completions, each budget is sometimes the one
    # broken first (and some completions break neither)
    student, teacher = tables()
    teachers = (teacher, second_teacher())
    for name, _, budgets in TWO_BUDGET_CASES:
        if name != "cmdp":
            continue
        firsts = set()
        for y in COMPLETIONS:
            steps = []
            for (cost, kind, d), t in zip(budgets, teachers, strict=True):
                running = brute_running(brute_costs(cost, y, student, t).detach(), kind)
                over = [i for i in ([H - 1] if kind == "mean" else range(H)) if running[i] > d]
                steps.append(min(over) if over else H)
            firsts.add("none" if min(steps) == H else ("tie" if steps[0] == steps[1] else int(steps[1] < steps[0])))
        assert {0, 1, "none"} <= firsts, (budgets, firsts)


def test_a_second_budget_changes_the_update():
    # the second budget is read: dropping it (its teacher far from the student) gives another gradient
    budgets = [("logratio", "sum", 0.3), ("teacher_nll", "sum", 3.0)]
    one = two_budget_exact_gradient("cmdp", {"penalty": 1.0, "informative": 1.0}, [budgets[0], ("logratio", "sum",
                                                                                                1e9)])
    two = two_budget_exact_gradient("cmdp", {"penalty": 1.0, "informative": 1.0}, budgets)
    assert (one - two).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# multipliers: one per budget, each driven by its own constraint

def test_lagrangian_moves_each_multiplier_by_its_own_budget_and_saves_them_by_name():
    first = OmegaConf.create({"cost": "logratio", "kind": "sum", "threshold": 1.0})
    other = OmegaConf.create({"teacher": "b", "cost": "logratio", "kind": "sum", "threshold": 5.0})
    cfg = OmegaConf.create({"name": "lagrangian", "controller": "dual_ascent", "init": 0.0, "lr": 0.1,
                            "ema_decay": 0.0, "lam_max": 10.0})
    optim = OmegaConf.create({"adv_scale": "none", "adv_baseline": "group"})
    m = build_method(cfg, first, optim, others=[("b", other)])
    mask = torch.ones(2, 2, dtype=torch.bool)
    c1, c2 = torch.full((2, 2), 1.5, dtype=torch.float64), torch.full((2, 2), 1.0, dtype=torch.float64)
    s1, s2 = constraint_stats(c1, mask, 1.0), constraint_stats(c2, mask, 5.0)
    b = Scored(mask=mask, task_reward=torch.zeros(2), old_logp=torch.zeros(2, 2), teacher_logp=torch.zeros(2, 2),
               costs=c1, stats=s1, group_size=2, others=(Budget("b", torch.zeros(2, 2), c2, s2),))
    logged = m.after_step(b)
    # C1 = 3 > 1: λ1 = 0.1 · 2; C2 = 2 < 5: λ2 stays at 0
    assert logged == {"lambda": pytest.approx(0.2), "lambda@teacher": pytest.approx(0.2), "lambda@b": 0.0}
    saved = m.state_dict()
    assert set(saved) == {"teacher", "b"}
    again = build_method(cfg, first, optim, others=[("b", other)])
    again.load_state_dict(json.loads(json.dumps(saved)))
    assert again.lams == m.lams


# ---------------------------------------------------------------------------------------------------------------
# what the config refuses, in one line

TWO = ["+constraints.other={teacher: other, cost: logratio, kind: sum, threshold: 4}",
       "+model.teachers.other={name_or_path: embedded:teacher, embedded: {flaw: null}}"]


@pytest.mark.parametrize(("overrides", "said"), [
    (["+constraints.other={teacher: nobody, cost: logratio, kind: sum, threshold: 4}"],
     "constraints.other.teacher=nobody names no teacher"),
    (["+constraints.teacher={teacher: teacher, cost: logratio, kind: sum, threshold: 4}"],
     "the name 'teacher' is the first constraint's"),
    (["+constraints.other={teacher: teacher, cost: token_kl, kind: sum, threshold: 4}"],
     "constraints.other.cost=token_kl: a further constraint's cost reads only the sampled tokens' log-probs"),
    (["+constraints.other={teacher: teacher, cost: logratio, kind: sum}"], "constraints.other.threshold is required"),
    (["+constraints.other={teacher: teacher, cost: logratio, kind: sum, threshold: -1}"],
     "constraints.other.threshold must be positive"),
    (["+model.teachers.spare={name_or_path: embedded:teacher}"], "model.teachers.spare is named by no constraint"),
    ([*TWO, "method=weakest_link"], "weakest_link's exact term"),
    ([*TWO, "method=saute"], "saute conditions the student on one remaining budget"),
    (["+constraints.other={teacher: other, cost: logratio, kind: sum, threshold: 4}",
      "+model.teachers.other={name_or_path: gpt2, embedded: {flaw: null}}"],
     "model.teachers.other.embedded changes the embedded teacher's recipe"),
    ([*TWO, "method=soft_penalty", "+method.penalties.othr=0.3"], "method.penalties.othr names no constraint"),
    (["+constraints.other={teacher: other, cost: logratio, kind: sum, threshold: 4}",
      "+model.teachers.other={name_or_path: /nonexistent/model}"],
     "model.teachers.other.name_or_path: no such model directory"),
    (["+constraints.other={teacher: teacher, cost: logratio, kind: summ, threshold: 4}"],
     "unknown constraints.other.kind 'summ'"),
])
def test_bad_budgets_are_refused_in_one_line(tmp_path, overrides, said):
    cfg = tiny_cfg(tmp_path, *overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_further_teacher_without_a_tokenizer_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = tiny_cfg(tmp_path, "+constraints.other={teacher: other, cost: logratio, kind: sum, threshold: 4}",
                   f"+model.teachers.other={{name_or_path: {tmp_path / 'empty'}}}")
    with pytest.raises(ConfigError, match=r"model.teachers.other.name_or_path: .* holds no model"):
        validate(cfg)


@pytest.mark.parametrize(("overrides", "said"), [
    (["+constraints.other=null"], "constraints.other must be a mapping of settings"),
    ([*TWO, "method=cmdp", "+method.penalties.other=0.3"], "method.penalties is soft_penalty's"),
    ([*TWO[:1], "+model.teachers.other={name_or_path: embedded:teacher, backend: server}"],
     "model.teachers.other.backend=server needs its own server"),
])
def test_more_bad_budgets_are_refused_in_one_line(tmp_path, overrides, said):
    with pytest.raises(ConfigError) as e:
        validate(tiny_cfg(tmp_path, *overrides))
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_further_teacher_runs_where_it_says_not_where_the_first_one_does(tmp_path):
    from cdistill.teachers import teacher_config

    cfg = tiny_cfg(tmp_path, *TWO, "model.teacher.backend=server", "model.teacher.server.base_url=http://a:1/v1",
                   "model.teacher.server.timeout=7", "model.teacher.dtype=bfloat16")
    t = teacher_config(cfg, "other")
    assert t.backend == "local" and "base_url" not in t.server and t.server.timeout == 7 and t.dtype == "bfloat16"


def test_empty_budget_sections_leave_a_runs_fingerprint_as_before_they_existed(tmp_path):
    # a checkpoint written before constraints existed must still resume
    from cdistill.checkpoint import fingerprint

    cfg = tiny_cfg(tmp_path, "method=soft_penalty")
    old = OmegaConf.to_container(cfg, resolve=True)
    del old["constraints"], old["model"]["teachers"], old["method"]["penalties"]
    assert fingerprint(cfg) == fingerprint(OmegaConf.create(old))
    assert fingerprint(tiny_cfg(tmp_path, *TWO)) != fingerprint(tiny_cfg(tmp_path))


def test_soft_penalty_reads_the_first_budgets_own_weight_alone_too():
    # method.penalties.teacher replaces method.penalty for the first budget with or without further ones, in the
    # reward and in whether the pathwise term is needed alike
    first = OmegaConf.create({"cost": "token_kl", "kind": "sum", "threshold": 1.0, "pathwise_gradient": True})
    optim = OmegaConf.create({"adv_scale": "none", "adv_baseline": "group"})
    zero = build_method(OmegaConf.create({"name": "soft_penalty", "penalty": 0.1, "penalties": {"teacher": 0.0}}),
                        first, optim)
    assert zero.penalties == [0.0] and not zero.pathwise_needed()
    mask = torch.ones(2, 2, dtype=torch.bool)
    costs = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    b = Scored(mask=mask, task_reward=torch.tensor([1.0, 0.0]), old_logp=torch.zeros(2, 2),
               teacher_logp=torch.zeros(2, 2), costs=costs, stats=constraint_stats(costs, mask, 1.0), group_size=2)
    grpo = build_method(OmegaConf.create({"name": "grpo"}), first, optim)
    torch.testing.assert_close(zero.advantages(b), grpo.advantages(b))


def test_two_budgets_validate_for_every_method_that_takes_them(tmp_path):
    for method in ("cmdp", "lagrangian", "soft_penalty", "grpo", "opd", "sft", "gkd", "seqkd"):
        validate(tiny_cfg(tmp_path, *TWO, f"method={method}"))


# ---------------------------------------------------------------------------------------------------------------
# what a batch and a run record

def test_batch_rates_are_joint_and_each_budget_is_reported_by_name():
    mask = torch.ones(4, 2, dtype=torch.bool)
    c1 = torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0], [2.0, 2.0]])
    c2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 3.0], [3.0, 3.0]])
    s1, s2 = constraint_stats(c1, mask, 1.0), constraint_stats(c2, mask, 1.0)
    b = Scored(mask=mask, task_reward=torch.tensor([1.0, 1.0, 1.0, 0.0]), old_logp=torch.zeros(4, 2),
               teacher_logp=torch.zeros(4, 2), costs=c1, stats=s1, group_size=4,
               others=(Budget("b", torch.zeros(4, 2), c2, s2),), entropy=torch.zeros(4, 2),
               sampled_kl=torch.zeros(4, 2))
    s = batch_summary(b)
    assert s["satisfaction_rate"] == 0.25 and s["success_rate"] == 0.25  # only the first meets both
    assert s["satisfaction_rate@teacher"] == 0.5 and s["satisfaction_rate@b"] == 0.5
    assert s["success_rate@b"] == 0.5 and s["divergence_mean@b"] == 3.0 and s["divergence_mean"] == 2.0


def test_a_run_with_two_teachers_of_different_tokenizers_records_every_budget(tmp_path):
    from cdistill.train import train

    cfg = tiny_cfg(tmp_path, "method=lagrangian", "method.lr=0.5",
                   "+constraints.correct={teacher: correct, cost: logratio, kind: sum, threshold: 3}",
                   "+model.teachers.correct={name_or_path: embedded:teacher, embedded: {tokenizer: {vocab_size: 300}}}")
    (tmp_path / "run").mkdir()
    summary = train(cfg, tmp_path / "run")
    for key in ("satisfaction_rate@teacher", "satisfaction_rate@correct", "divergence_mean@correct",
                "never_exceeded_rate@correct"):
        assert 0 <= summary[key] <= max(1.0, summary[key])
    assert summary["constraints"]["correct"] == {"teacher": "correct", "cost": "logratio", "kind": "sum",
                                                 "threshold": 3.0}
    assert set(summary["method_state"]) == {"teacher", "correct"}
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("lambda@correct" in s and "satisfaction_rate@correct" in s for s in steps if "reward" in s)
    samples = [s for line in (tmp_path / "run" / "eval_samples.jsonl").read_text().splitlines()
               for s in json.loads(line)["samples"]]
    for s in samples:
        both = s["budgets"]["teacher"]["satisfied"] and s["budgets"]["correct"]["satisfied"]
        assert s["satisfied"] == both
        assert s["budgets"]["teacher"]["divergence"] == s["divergence"]
    # the other tokenizer's teacher scores the text: its divergence differs from the first teacher's
    assert any(abs(s["budgets"]["correct"]["divergence"] - s["divergence"]) > 1e-3 for s in samples)
    joint = sum(s["satisfied"] for s in samples) / len(samples)
    assert summary["satisfaction_rate"] == pytest.approx(joint)


def test_a_further_teacher_served_with_its_own_tokenizer_gives_the_budget_it_gives_in_process(tmp_path, cache):
    from fake_vllm_server import FakeVLLM

    from cdistill.models.loading import load_model, load_tokenizer, other_teacher_path
    from cdistill.teachers import teacher_config
    from cdistill.train import train

    common = ["method=cmdp", "constraint.threshold=5",
              "+constraints.correct={teacher: correct, cost: logratio, kind: sum, threshold: 4}",
              "+model.teachers.correct={name_or_path: embedded:teacher, embedded: {tokenizer: {vocab_size: 300}}}"]
    for run in ("local", "served"):
        (tmp_path / run).mkdir()
    local = tiny_cfg(tmp_path, *common, cache=cache)
    train(local, tmp_path / "local")
    path = other_teacher_path(local, teacher_config(local, "correct"))
    with FakeVLLM(load_model(path), load_tokenizer(path)) as fake:
        served = tiny_cfg(tmp_path, *common, "+model.teachers.correct.backend=server",
                          "+model.teachers.correct.server={model: teacher, base_url: " + fake.base_url + "}",
                          cache=cache)
        validate(served)
        train(served, tmp_path / "served")
    steps = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
              if '"time_step"' in line] for run in ("local", "served")]
    assert len(steps[0]) == len(steps[1]) == 2
    for x, y in zip(*steps, strict=True):
        assert x["divergence_mean@correct"] != x["divergence_mean@teacher"]
        for key in ("divergence_mean@correct", "satisfaction_rate", "loss"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key


def test_a_further_teachers_unreachable_server_is_named_by_its_own_settings(tmp_path, cache):
    from cdistill.models.loading import first_teacher_components, other_teacher_models
    from cdistill.models.served import ServerError

    cfg = tiny_cfg(tmp_path, TWO[0], "+model.teachers.other={name_or_path: embedded:teacher, backend: server, "
                   "server: {base_url: 'http://127.0.0.1:9/v1', retries: 0, model: teacher}}", cache=cache)
    validate(cfg)
    with pytest.raises(ServerError, match=r"model\.teachers\.other\.server\.base_url") as e:
        other_teacher_models(cfg, first_teacher_components(cfg))
    assert "model.teacher.server" not in str(e.value)


def test_a_run_with_two_budgets_resumes_its_multipliers_by_name_to_the_same_end(tmp_path, cache):
    from cdistill.train import train

    two = ["method=lagrangian", "method.lr=0.5", "optim.steps=4", "checkpoint.every=2", "checkpoint.keep=0",
           "+constraints.correct={teacher: correct, cost: logratio, kind: sum, threshold: 3}",
           "+model.teachers.correct={name_or_path: embedded:teacher, embedded: {tokenizer: {vocab_size: 300}}}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    a = train(tiny_cfg(tmp_path, *two, cache=cache), straight)
    halfway = straight / "checkpoints" / "step-000002"
    b = train(tiny_cfg(tmp_path, *two, f"resume={halfway}", cache=cache), resumed)
    assert set(a["method_state"]) == {"teacher", "correct"}
    assert a["method_state"] == b["method_state"] and a["method_state"]["correct"]["lam"] > 0
    for key in ("accuracy_sampled", "satisfaction_rate", "satisfaction_rate@correct", "divergence_mean@correct"):
        assert a[key] == b[key], key


def test_a_misspelt_setting_of_a_named_budget_is_refused_with_the_entrys_own_name():
    from cdistill.schema import unknown_key

    said = unknown_key("constraints.correct.treshold", "train")
    assert said.endswith("(did you mean constraints.correct.threshold?)")
