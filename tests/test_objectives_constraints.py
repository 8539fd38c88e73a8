"""Constraint statistics and modified rewards against loop-based references."""

import pytest
import torch
from conftest import ragged_mask

from cdistill.objectives import (
    cmdp_rewards,
    completion_mask,
    constraint_stats,
    running_step,
    soft_penalty_rewards,
    terminal_reward,
)
from cdistill.objectives.rewards import after_violation


def brute_stats(costs, n, d, kind):
    """Loops over one row: (running list, C(y), first violation or -1)."""
    running, total, best = [], 0.0, -float("inf")
    for t in range(n):
        total += float(costs[t])
        if kind == "sum":
            running.append(total)
        elif kind == "mean":
            running.append(total / (t + 1))
        else:
            best = max(best, total / (t + 1))
            running.append(best)
    value = running[-1] if n else 0.0
    if kind == "mean":
        first = n - 1 if n and value > d else -1
    else:
        first = next((t for t in range(n) if running[t] > d), -1)
    return running, value, first


@pytest.mark.parametrize("kind", ["sum", "mean", "prefix_mean"])
def test_constraint_stats_match_brute_force_on_ragged_rows(kind):
    lengths = [7, 4, 1, 0, 7, 3]
    costs = torch.randn(len(lengths), 7).double()
    mask = ragged_mask(lengths, 7)
    d = 0.3
    st = constraint_stats(costs, mask, d, kind)
    for i, n in enumerate(lengths):
        running, value, first = brute_stats(costs[i], n, d, kind)
        assert st.running[i, :n].tolist() == pytest.approx(running)
        assert st.running[i, n:].abs().sum() == 0
        assert st.value[i].item() == pytest.approx(value)
        assert st.increments[i].sum().item() == pytest.approx(value)
        assert st.violation_step[i].item() == first
        assert bool(st.satisfied[i]) == (value <= d)
        absorbed = [first >= 0 and t >= first for t in range(n)] + [False] * (7 - n)
        assert st.absorbed[i].tolist() == absorbed
        # the peak: the largest C_t that counts (only C(y) for mean); never exceeded on any prefix iff peak <= d
        peak = value if kind == "mean" or not n else max(running)
        assert st.peak[i].item() == pytest.approx(peak)
        if n:
            assert (st.peak[i].item() <= d) == (first == -1)


def test_statistic_exactly_at_threshold_is_within_budget():
    costs = torch.tensor([[0.5, 0.5, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    st = constraint_stats(costs, mask, 1.0, "sum")
    assert st.satisfied.item() and st.violation_step.item() == -1 and not st.absorbed.any()


def test_empty_completion_has_zero_value_and_no_violation():
    st = constraint_stats(torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.bool), -1.0, "prefix_mean")
    assert st.value.tolist() == [0.0, 0.0] and st.violation_step.tolist() == [-1, -1]
    assert not st.satisfied.any()  # 0 > −1: an empty answer does not satisfy a negative budget


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown constraint kind"):
        constraint_stats(torch.zeros(1, 1), torch.ones(1, 1), 0.0, "max")


def test_completion_mask_keeps_first_eos_and_drops_everything_after():
    eos, pad = 2, 0
    tokens = torch.tensor([[5, 6, 2, 0, 0], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0], [7, 2, 7, 2, 7]])
    m = completion_mask(tokens, eos)
    assert m.tolist() == [
        [True, True, True, False, False],
        [True] * 5,
        [True, False, False, False, False],
        [True, True, False, False, False],
    ]
    assert completion_mask(torch.tensor([[5, 9, 3]]), [9, 3]).tolist() == [[True, True, False]]
    assert pad == 0


def brute_cmdp(task_r, costs, n, d, penalty, informative, penalty_on="first"):
    _, _, first = brute_stats(costs, n, d, "sum")
    r = [0.0] * len(costs)
    if n == 0:
        return r
    if first < 0:
        r[n - 1] = float(task_r)
        return r
    r[first] = -penalty
    for t in range(first + 1, n):
        r[t] = -float(informative) * float(costs[t]) - (penalty if penalty_on == "every" else 0.0)
    return r


@pytest.mark.parametrize(("informative", "penalty_on"), [(True, "first"), (False, "first"), (1.0, "first"),
                                                          (0.0, "first"), (0.35, "first"), (0.35, "every"),
                                                          (0.0, "every")])
def test_cmdp_rewards_match_brute_force(informative, penalty_on):
    lengths = [6, 6, 3, 1, 0]
    costs = torch.rand(len(lengths), 6).double() * 0.6
    costs[0] = 0.05  # never violates
    task_r = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]).double()
    mask = ragged_mask(lengths, 6)
    d, penalty = 0.5, 3.0
    st = constraint_stats(costs, mask, d, "sum")
    got = cmdp_rewards(task_r, costs, mask, st, penalty, informative, penalty_on)
    for i, n in enumerate(lengths):
        assert got[i].tolist() == pytest.approx(brute_cmdp(task_r[i], costs[i], n, d, penalty, informative,
                                                           penalty_on))


def test_cmdp_informative_weight_one_is_bitwise_the_switch_it_replaced():
    # configs written when `informative` was true / false must compute exactly what they did
    lengths = [6, 5, 4]
    costs = torch.rand(3, 6) * 0.6
    mask = ragged_mask(lengths, 6)
    st = constraint_stats(costs, mask, 0.5, "sum")
    task_r = torch.ones(3)
    for switch, weight in ((True, 1.0), (False, 0)):
        assert torch.equal(cmdp_rewards(task_r, costs, mask, st, 2.0, switch),
                           cmdp_rewards(task_r, costs, mask, st, 2.0, weight))
    with pytest.raises(ValueError, match="penalty_on"):
        cmdp_rewards(task_r, costs, mask, st, 2.0, 1.0, "sometimes")


def test_cmdp_all_violated_forfeits_every_task_reward_and_none_violated_keeps_them():
    mask = torch.ones(3, 4, dtype=torch.bool)
    task_r = torch.ones(3)
    st = constraint_stats(torch.full((3, 4), 2.0), mask, 1.0, "sum")
    r = cmdp_rewards(task_r, torch.full((3, 4), 2.0), mask, st, penalty=5.0)
    assert (r[:, 0] == -5.0).all() and (r[:, 1:] == -2.0).all()
    st = constraint_stats(torch.zeros(3, 4), mask, 1.0, "sum")
    r = cmdp_rewards(task_r, torch.zeros(3, 4), mask, st, penalty=5.0)
    assert r.sum().item() == 3.0 and (r[:, -1] == 1.0).all()


def test_after_violation_excludes_the_violating_token_itself():
    costs = torch.tensor([[0.0, 2.0, 1.0, 1.0]])
    st = constraint_stats(costs, torch.ones(1, 4, dtype=torch.bool), 1.0, "sum")
    assert after_violation(st).tolist() == [[False, False, True, True]]


def test_soft_penalty_sums_to_r_minus_lambda_c_for_every_kind():
    lengths = [5, 2, 4]
    costs = torch.randn(3, 5).double()
    mask = ragged_mask(lengths, 5)
    task_r = torch.tensor([1.0, 0.0, 1.0]).double()
    for kind in ("sum", "mean", "prefix_mean"):
        st = constraint_stats(costs, mask, 0.0, kind)
        r = soft_penalty_rewards(task_r, st, mask, penalty=0.1)
        torch.testing.assert_close(r.sum(1), task_r - 0.1 * st.value)
        assert (r[~mask] == 0).all()


def test_terminal_reward_sits_on_the_last_valid_token():
    mask = ragged_mask([3, 1, 0], 4)
    r = terminal_reward(torch.tensor([2.0, 3.0, 4.0]), mask)
    assert r.tolist() == [[0, 0, 2.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("kind", ["sum", "mean", "prefix_mean"])
def test_the_running_statistic_one_token_at_a_time_equals_constraint_stats(kind):
    costs = torch.randn(4, 6).double()
    mask = ragged_mask([6, 3, 1, 5], 6)
    want = constraint_stats(costs, mask, 1.0, kind).running
    total, count = torch.zeros(4).double(), torch.zeros(4).double()
    running = torch.full((4,), float("-inf")).double()
    for j in range(6):
        live = mask[:, j].double()
        total, count = total + costs[:, j] * live, count + live
        running = torch.where(mask[:, j], running_step(kind, total, count, running), running)
        torch.testing.assert_close(running[mask[:, j]], want[:, j][mask[:, j]])
