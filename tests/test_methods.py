"""Methods: which terms each differentiates, and that each builds its advantages from the objectives."""

import json

import pytest
import torch
from conftest import ragged_mask
from omegaconf import OmegaConf

from cdistill.methods import METHODS, build_method
from cdistill.objectives import (
    MicroBatch,
    Scored,
    ScoringSpec,
    constraint_stats,
    group_normalize,
    logratio_cost,
    reward_to_go,
    terminal_reward,
)

OPTIM = OmegaConf.create({"adv_scale": "std"})


# per-token log-ratio costs: C(y) = 2.5, 0.4, 1.5, 0.3 (mean 1.175); under d = 0.8 rows 0 and 2 violate (at
# their second and third token) and rows 1 and 3 never do, so each group of two holds one of each
COSTS = torch.tensor([[0.5] * 5, [0.1] * 4 + [0.0], [0.3] * 5, [0.1] * 3 + [0.0] * 2])


def scored_batch(threshold=1.0, kind="sum"):
    mask = ragged_mask([5, 4, 5, 3], 5)
    teacher = torch.full((4, 5), -1.0)
    old = teacher + COSTS
    costs = logratio_cost(old, teacher, mask)
    stats = constraint_stats(costs, mask, threshold, kind)
    return Scored(mask=mask, task_reward=torch.tensor([1.0, 0.0, 1.0, 1.0]), old_logp=old * mask,
                  teacher_logp=teacher * mask, costs=costs, stats=stats, group_size=2)


def micro_batch(b, logp):
    return MicroBatch(rows=torch.arange(b.mask.shape[0]), logp=logp, hidden=None, mask=b.mask,
                      teacher_logp=b.teacher_logp, teacher_hidden=None, student_weight=None, teacher_weight=None,
                      spec=ScoringSpec(chunk=8))


def method(name, **cfg):
    constraint = OmegaConf.create({"cost": "logratio", "kind": "sum", "threshold": 1.0})
    return build_method(OmegaConf.create({"name": name, **cfg}), constraint, OPTIM)


def test_registry_holds_every_method_and_rejects_unknown_names():
    assert set(METHODS) == {"cmdp", "weakest_link", "saute", "lagrangian", "soft_penalty", "grpo", "opd", "gkd",
                            "sft", "seqkd"}
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method("nope")


def test_grpo_advantages_are_group_normalised_outcome_rewards():
    b = scored_batch()
    want = group_normalize(reward_to_go(terminal_reward(b.task_reward, b.mask), b.mask), b.mask, 2)
    torch.testing.assert_close(method("grpo").advantages(b), want)


@pytest.mark.parametrize(("cost", "informative"), [("logratio", True), ("teacher_nll", True), ("logratio", False)])
def test_cmdp_adds_no_pathwise_term_where_its_expectation_is_zero_or_there_is_no_cost_in_the_return(cost, informative):
    # logratio: ∇θ c_t = ∇θ log π_θ(y_t|s_t) has zero mean given the prefix, and the prefix decides t > τ
    b = scored_batch(threshold=0.8)
    constraint = OmegaConf.create({"cost": cost, "kind": "sum", "threshold": 0.8})
    m = build_method(OmegaConf.create({"name": "cmdp", "penalty": 1.0, "informative": informative}), constraint, OPTIM)
    m.advantages(b)
    assert m.extra_loss(b, micro_batch(b, b.old_logp.clone().requires_grad_(True)), b.mask.sum()) is None


def test_opd_refuses_its_sampled_estimator_with_a_cost_that_does_not_depend_on_the_sampled_token():
    constraint = OmegaConf.create({"cost": "token_kl", "kind": "sum", "threshold": 1.0})
    with pytest.raises(ValueError, match="learns nothing from constraint.cost=token_kl"):
        build_method(OmegaConf.create({"name": "opd", "estimator": "sampled", "returns": "token"}), constraint, OPTIM)
    build_method(OmegaConf.create({"name": "opd", "estimator": "full", "returns": "token"}), constraint, OPTIM)
    # −Σ_{k≥t} KL(s_k) does depend on y_t through the later prefixes (and gets the pathwise term)
    build_method(OmegaConf.create({"name": "opd", "estimator": "sampled", "returns": "to_go"}), constraint, OPTIM)


def test_gkd_coin_resumes_from_its_saved_state_through_json():
    constraint = OmegaConf.create({"cost": "logratio", "kind": "sum", "threshold": 1.0})
    cfg = OmegaConf.create({"name": "gkd", "off_policy": "reference", "on_policy_fraction": 0.5, "beta": 0.5})
    a = build_method(cfg, constraint, OPTIM, seed=3)
    first = [a.source(s) for s in range(5)]
    b = build_method(cfg, constraint, OPTIM, seed=99)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as summary.json and checkpoints hold it
    assert [a.source(s) for s in range(20)] == [b.source(s) for s in range(20)]
    again = build_method(cfg, constraint, OPTIM, seed=3)
    assert [again.source(s) for s in range(5)] == first  # the seed alone decides the coins


def test_cmdp_with_a_large_penalty_ranks_every_violating_sample_below_every_satisfying_one():
    b = scored_batch(threshold=0.8)
    adv = method("cmdp", penalty=100.0, informative=True).advantages(b)
    assert (b.stats.violation_step >= 0).tolist() == [True, False, True, False]
    # row 1 earns no task reward and row 0 does, yet the violating row 0 ranks below it; so does row 2 below 3
    first = adv[:, 0]
    assert first[[0, 2]].max() < first[[1, 3]].min()


def lagrangian(threshold):
    constraint = OmegaConf.create({"cost": "logratio", "kind": "sum", "threshold": threshold})
    cfg = {"name": "lagrangian", "controller": "dual_ascent", "init": 0.0, "lr": 0.5, "ema_decay": 0.0,
           "lam_max": 10.0, "pid": {"kp": 0.1, "ki": 0.1, "kd": 0.0}}
    return build_method(OmegaConf.create(cfg), constraint, OPTIM)


def test_lagrangian_multiplier_rises_over_budget_and_shapes_advantages():
    m, b = lagrangian(1.0), scored_batch(threshold=1.0)  # mean C(y) 1.175 > 1
    a0 = m.advantages(b)
    lams = [m.after_step(b)["lambda"] for _ in range(3)]
    torch.testing.assert_close(lams, [0.5 * 0.175 * k for k in (1, 2, 3)])  # dual ascent, lr 0.5
    assert not torch.allclose(m.advantages(b), a0)
    restored = lagrangian(1.0)
    restored.load_state_dict(m.state_dict())
    assert restored.lam == m.lam


def test_lagrangian_multiplier_stays_at_zero_under_budget():
    m, b = lagrangian(5.0), scored_batch(threshold=5.0)
    assert [m.after_step(b)["lambda"] for _ in range(3)] == [0.0, 0.0, 0.0]


def test_soft_penalty_advantages_use_the_fixed_penalty():
    b = scored_batch()
    low = method("soft_penalty", penalty=0.0).advantages(b)
    torch.testing.assert_close(low, method("grpo").advantages(b))
    assert not torch.allclose(method("soft_penalty", penalty=5.0).advantages(b), low)


def test_lagrangian_lambda_is_an_exchange_rate_between_reward_and_cost_whatever_the_cost_units():
    # costs in other units (×10) with λ in the matching units (÷10) describe the same objective: the combined
    # return R − λ C is the same, so the update must be too. Standardising A_R and A_C separately broke this.
    b = scored_batch(threshold=1.0)
    scaled = Scored(mask=b.mask, task_reward=b.task_reward, old_logp=b.old_logp, teacher_logp=b.teacher_logp,
                    costs=b.costs * 10, stats=constraint_stats(b.costs * 10, b.mask, 10.0, "sum"), group_size=2)
    adv = {}
    for name, batch, lam in (("plain", b, 0.8), ("tenfold", scaled, 0.08)):
        constraint = OmegaConf.create({"cost": "logratio", "kind": "sum", "threshold": 1.0})
        cfg = {"name": "lagrangian", "controller": "dual_ascent", "init": lam, "lr": 0.0, "ema_decay": 0.0,
               "lam_max": 10.0, "pid": {"kp": 0.1, "ki": 0.1, "kd": 0.0}}
        m = build_method(OmegaConf.create(cfg), constraint, OPTIM)  # OPTIM: std scale
        adv[name] = m.advantages(batch) * (1 + lam)
    torch.testing.assert_close(adv["plain"], adv["tenfold"])
