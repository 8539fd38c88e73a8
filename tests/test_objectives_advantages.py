"""Returns, group normalisation, policy losses and multipliers."""

import json
import math
import statistics

import pytest
import torch
from conftest import CONF_DEFAULTS, ragged_mask
from omegaconf import OmegaConf

from cdistill.objectives import (
    clipped_policy_loss,
    constraint_stats,
    expected_immediate_reward,
    future_return,
    group_normalize,
    group_scale,
    reward_to_go,
    token_mean,
    weakest_link_exact_term,
)
from cdistill.objectives.multipliers import dual_ascent_init, dual_ascent_update, pid_init, pid_update


def test_reward_to_go_matches_loops():
    lengths = [5, 3, 0]
    r = torch.randn(3, 5).double()
    mask = ragged_mask(lengths, 5)
    g = reward_to_go(r, mask)
    for i, n in enumerate(lengths):
        for t in range(5):
            want = sum(float(r[i, k]) for k in range(t, n)) if t < n else 0.0
            assert g[i, t].item() == pytest.approx(want)


def test_group_normalize_is_grpo_for_outcome_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]).double()
    lengths = [4, 2, 3, 1, 4, 4, 2, 3]
    mask = ragged_mask(lengths, 4)
    values = rewards[:, None] * mask
    adv = group_normalize(values, mask, group_size=4)
    for g in range(2):
        rs = rewards[4 * g : 4 * g + 4].tolist()
        mu, sd = statistics.fmean(rs), statistics.pstdev(rs)
        for i in range(4):
            row = 4 * g + i
            want = (rs[i] - mu) / (sd + 1e-6)
            assert adv[row, : lengths[row]].tolist() == pytest.approx([want] * lengths[row])
            assert adv[row, lengths[row] :].abs().sum() == 0


def test_group_normalize_per_token_values_against_loops_and_mean_only_option():
    lengths = [4, 2, 3, 0]
    v = torch.randn(4, 4).double()
    mask = ragged_mask(lengths, 4)
    present = [i for i in range(4) if lengths[i]]
    means = [statistics.fmean(v[i, : lengths[i]].tolist()) for i in present]
    mu = statistics.fmean(means)
    var = statistics.fmean([statistics.fmean([(x - mu) ** 2 for x in v[i, : lengths[i]].tolist()]) for i in present])
    adv = group_normalize(v, mask, 4)
    centred = group_normalize(v, mask, 4, scale="none")
    for i in present:
        for t in range(lengths[i]):
            assert adv[i, t].item() == pytest.approx((float(v[i, t]) - mu) / (math.sqrt(var) + 1e-6))
            assert centred[i, t].item() == pytest.approx(float(v[i, t]) - mu)
    assert adv[3].abs().sum() == 0


def test_group_with_identical_rewards_has_zero_advantage_and_bad_group_size_is_rejected():
    mask = torch.ones(4, 3, dtype=torch.bool)
    assert group_normalize(torch.ones(4, 3), mask, 2).abs().max() == 0
    with pytest.raises(ValueError, match="whole number of groups"):
        group_normalize(torch.ones(4, 3), mask, 3)


def test_token_mean_divides_by_generated_tokens_of_whole_batch():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = ragged_mask([3, 1], 3)
    assert token_mean(x, mask).item() == pytest.approx((1 + 2 + 3 + 10) / 4)


def test_policy_loss_at_ratio_one_is_reinforce_with_token_mean():
    logp = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, 0.0, 0.0]])
    mask = ragged_mask([3, 1], 3)
    loss, stats = clipped_policy_loss(logp, logp.detach(), adv, mask)
    loss.backward()
    # d/dlogp of −A·ρ at ρ=1 is −A, divided by the 4 generated tokens
    torch.testing.assert_close(logp.grad, -adv * mask / 4)
    assert stats["clip_frac"].item() == 0


def test_policy_loss_clips_against_brute_force_and_does_not_differentiate_advantages():
    logp = torch.tensor([[0.0, -1.0, 0.5]], requires_grad=True)
    old = torch.tensor([[-0.5, -1.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.3)
    want = 0.0
    for t in range(3):
        rho = math.exp(float(logp[0, t].detach() - old[0, t]))
        a = float(adv[0, t].detach())
        want += -min(rho * a, min(max(rho, 0.8), 1.3) * a)
    assert loss.item() == pytest.approx(want / 3)
    loss.backward()
    assert adv.grad is None or adv.grad.abs().sum() == 0
    # token 0 (ratio e^0.5 > 1.3, A > 0) is clipped: no gradient; token 2 (A < 0) is not
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 2].item() != 0.0
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)


def brute_immediate(zs, zt, s_before, t, absorbed, d, penalty, informative):
    ps = torch.softmax(zs.double(), -1)
    lt = torch.log_softmax(zt.double(), -1)
    total = 0.0
    for a in range(len(ps)):
        c = -float(lt[a])
        if absorbed:
            r = -c if informative else 0.0
        else:
            r = -penalty if (s_before + c) / t > d else 0.0
        total += float(ps[a]) * r
    return total


@pytest.mark.parametrize("informative", [True, False])
def test_weakest_link_expected_immediate_reward_matches_brute_force(informative):
    n, v = 6, 9
    zs, zt = torch.randn(n, v), torch.randn(n, v)
    s_before = torch.rand(n) * 4
    pos = torch.tensor([1, 2, 3, 4, 5, 6])
    absorbed = torch.tensor([False, False, True, False, True, False])
    got = expected_immediate_reward(zs, zt, s_before, pos, absorbed, 2.2, 5.0, informative)
    for i in range(n):
        want = brute_immediate(zs[i], zt[i], float(s_before[i]), int(pos[i]), bool(absorbed[i]), 2.2, 5.0, informative)
        assert got[i].item() == pytest.approx(want, abs=1e-5)


def test_weakest_link_term_is_differentiable_in_student_only():
    zs = torch.randn(2, 5, requires_grad=True)
    zt = torch.randn(2, 5, requires_grad=True)
    out = expected_immediate_reward(zs, zt, torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.bool), 1.0, 3.0)
    out.sum().backward()
    assert zs.grad.abs().sum() > 0 and (zt.grad is None or zt.grad.abs().sum() == 0)


def test_dual_ascent_rises_above_budget_decays_below_and_is_clipped():
    s = dual_ascent_init()
    for _ in range(20):
        s = dual_ascent_update(s, 2.0, 1.0, lr=0.5, ema_decay=0.0)
    assert s["lam"] == pytest.approx(10.0)
    s = dual_ascent_update(s, 1e9, 1.0, lr=1.0, ema_decay=0.0, lam_max=50.0)
    assert s["lam"] == 50.0
    for _ in range(200):
        s = dual_ascent_update(s, 0.0, 1.0, lr=0.5, ema_decay=0.0)
    assert s["lam"] == 0.0
    assert json.loads(json.dumps(s)) == s


def test_dual_ascent_smooths_with_ema():
    s = dual_ascent_update(dual_ascent_init(), 3.0, 1.0, lr=1.0, ema_decay=0.9)
    assert s["cost_ema"] == 3.0 and s["lam"] == pytest.approx(2.0)
    s = dual_ascent_update(s, 1.0, 1.0, lr=1.0, ema_decay=0.9)
    assert s["cost_ema"] == pytest.approx(2.8) and s["lam"] == pytest.approx(3.8)


def test_pid_matches_stooke_update_by_hand():
    s = pid_init()
    s = pid_update(s, 3.0, 1.0, kp=1.0, ki=0.5, kd=2.0, ema_decay=0.0)
    assert s["lam"] == pytest.approx(1.0 * 2 + 0.5 * 2 + 0)
    s = pid_update(s, 4.0, 1.0, kp=1.0, ki=0.5, kd=2.0, ema_decay=0.0)
    assert s["integral"] == pytest.approx(5.0)
    assert s["lam"] == pytest.approx(1.0 * 3 + 0.5 * 5 + 2.0 * 1)
    s = pid_update(s, 0.0, 1.0, kp=1.0, ki=0.5, kd=2.0, ema_decay=0.0)
    assert s["integral"] == pytest.approx(4.0) and s["lam"] == pytest.approx(max(0.0, -1.0 + 2.0))
    assert json.loads(json.dumps(s)) == s
    nan_state = pid_update(s, float("nan"), 1.0, 1.0, 1.0, 1.0)
    assert nan_state == s


def test_future_return_leaves_out_only_the_exactly_expected_part_of_each_token():
    mask = ragged_mask([4, 2], 4)
    r, imm = torch.randn(2, 4) * mask, torch.randn(2, 4) * mask
    got = future_return(r, imm, mask)
    for b in range(2):
        for t in range(4):
            want = sum(float(r[b, k]) for k in range(t, 4) if mask[b, k]) - float(imm[b, t]) if mask[b, t] else 0.0
            assert got[b, t].item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("informative", [True, False])
def test_weakest_link_exact_term_at_every_visited_prefix_matches_brute_force(informative):
    mask = ragged_mask([5, 3, 1], 5)
    hs, ht = torch.randn(3, 5, 4, requires_grad=True), torch.randn(3, 5, 4)
    ws, wt = torch.randn(8, 4), torch.randn(8, 4)
    costs = torch.rand(3, 5) * 3 * mask
    stats = constraint_stats(costs, mask, 1.4, "prefix_mean")
    got = weakest_link_exact_term(hs, ws, ht, wt, costs, stats.absorbed, mask, 1.4, 4.0, informative, chunk=2,
                                  student_temperature=0.5)
    for b in range(3):
        for t in range(5):
            if not mask[b, t]:
                assert got[b, t].item() == 0.0
                continue
            before = float(costs[b, :t].sum())
            gone = t > 0 and bool(stats.absorbed[b, t - 1])
            want = brute_immediate((hs[b, t].detach() @ ws.t()) / 0.5, ht[b, t] @ wt.t(), before, t + 1, gone, 1.4,
                                   4.0, informative)
            assert got[b, t].item() == pytest.approx(want, abs=1e-5)
    got.sum().backward()
    assert hs.grad.abs().sum() > 0


def test_pid_integral_stops_at_the_maximum_so_lambda_falls_as_soon_as_the_cost_does():
    # 50 steps far over budget saturate λ at 10; one step under budget must bring it down at once (a wound-up
    # integral would hold λ at its maximum for dozens of steps)
    s = pid_init()
    for _ in range(50):
        s = pid_update(s, 5.0, 1.0, kp=0.1, ki=0.5, kd=0.0, ema_decay=0.0, lam_max=10.0)
    assert s["lam"] == 10.0 and s["integral"] == 20.0  # = λ_max / K_i
    s = pid_update(s, 0.0, 1.0, kp=0.1, ki=0.5, kd=0.0, ema_decay=0.0, lam_max=10.0)
    assert s["lam"] == pytest.approx(0.1 * -1.0 + 0.5 * 19.0)


def test_a_group_of_equal_returns_is_scaled_by_one_not_by_one_over_epsilon():
    # its advantages are zero either way, but extra terms of its completions are divided by the same scale
    values = torch.stack([torch.full((3,), 2.0)] * 2 + [torch.tensor([1.0, 0.0, 0.0]), torch.zeros(3)])
    mask = torch.ones(4, 3, dtype=torch.bool)
    assert group_scale(values, mask, 2, "std").tolist()[:2] == [1.0, 1.0]
    assert group_normalize(values, mask, 2, "std")[:2].abs().max() == 0


def test_pid_integrates_the_raw_error_and_smooths_only_p_and_d():
    s = pid_init()
    s = pid_update(s, 3.0, 1.0, kp=1.0, ki=1.0, kd=0.0, ema_decay=0.5)
    s = pid_update(s, 1.0, 1.0, kp=1.0, ki=1.0, kd=0.0, ema_decay=0.5)
    # EMA of the cost: 3, then 0.5·3 + 0.5·1 = 2; the integral adds the raw errors 2 and 0
    assert s["integral"] == pytest.approx(2.0) and s["lam"] == pytest.approx(1.0 * (2.0 - 1.0) + 2.0)


@pytest.mark.parametrize("violator_cost", [0.0, 1.0])
def test_under_the_default_scale_a_task_reward_does_not_depend_on_another_completions_cost_tail(violator_cost):
    # G = 4, T = 20, cmdp's returns: a correct and a wrong completion in budget, beside a third that violates at
    # its third token and pays violator_cost per token after it (0: nobody pays a tail). Under a σ pooled over
    # the group's tokens the gap between the first two is 2.03 without the tail and 0.185 with it.
    scale = OmegaConf.load(CONF_DEFAULTS).optim.adv_scale
    t = 20
    returns = torch.zeros(4, t)
    returns[0] = 1.0  # correct, in budget: R at the end, reward-to-go 1 at every token
    returns[2, :3] = -1.0 - violator_cost * (t - 3)  # the violator: −n at τ = 2, then −c_t
    returns[2, 3:] = -violator_cost * torch.arange(t - 3, 0, -1)
    adv = group_normalize(returns, torch.ones(4, t, dtype=torch.bool), 4, scale)
    assert (adv[0] - adv[1]).tolist() == pytest.approx([1.0] * t)
