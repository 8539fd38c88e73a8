"""``cdistill.eval.stats``: the two-way bootstrap against brute-force enumeration, the paired sign-flip test
against hand-counted p-values, verdicts, curve smoothing and seed bands, and input validation."""

import itertools
import math

import numpy as np
import pytest

from cdistill.eval.stats import (
    Difference,
    band,
    bootstrap_means,
    group_interval,
    paired_difference,
    smooth,
    verdict,
)

BIG = 200_000  # resamples for the comparisons with exact enumeration


def all_resample_means(values):
    """Every equally likely two-way bootstrap outcome of an [S, N] matrix (S^S row choices x N^N column choices),
    as the sorted list of sub-matrix means."""
    s, n = values.shape
    return np.sort([values[np.ix_(r, c)].mean()
                    for r in itertools.product(range(s), repeat=s)
                    for c in itertools.product(range(n), repeat=n)])


def exact_quantile(outcomes, p):
    """The population p-quantile (inverse CDF: the smallest x with P(X <= x) >= p) of equally likely outcomes."""
    return outcomes[min(len(outcomes), max(1, math.ceil(p * len(outcomes)))) - 1]


def assert_quantile_matches(estimate, outcomes, q, resamples):
    """The sample q-quantile of ``resamples`` draws lies between the exact (q - e)- and (q + e)-quantiles with
    e = 5 standard errors of an empirical CDF at q, sqrt(q (1 - q) / resamples) (~3.5e-4 at q = 0.025 and 200000
    draws), i.e. except with probability ~1e-6; 1e-12 absorbs rounding between the two ways of computing a mean."""
    e = 5 * math.sqrt(q * (1 - q) / resamples)
    assert exact_quantile(outcomes, q - e) - 1e-12 <= estimate <= exact_quantile(outcomes, q + e) + 1e-12


def assert_distribution_matches(draws, outcomes, scale, resamples):
    """Each atom's frequency among ``draws`` is within 5 binomial standard errors of its exact probability (atoms are
    identified by mean * scale, an integer for the integer matrices used here)."""
    exact_atoms, exact_counts = np.unique(np.rint(outcomes * scale), return_counts=True)
    atoms, counts = np.unique(np.rint(draws * scale), return_counts=True)
    assert set(atoms) <= set(exact_atoms)  # no impossible outcome was drawn
    freq = dict(zip(atoms, counts / resamples, strict=True))
    for atom, p in zip(exact_atoms, exact_counts / len(outcomes), strict=True):
        assert abs(freq.get(atom, 0.0) - p) <= 5 * math.sqrt(p * (1 - p) / resamples) + 1e-12


# distinct integer entries, so the resample means are distinct multiples of 1 / (S N) with few ties
TWO_WAY_CASES = [np.array([[0.0, 1.0, 4.0], [9.0, 16.0, 25.0]]),   # S=2, N=3: 4 x 27 = 108 outcomes
                 np.array([[0.0, 7.0], [3.0, 12.0], [4.0, 20.0]])]  # S=3, N=2: 27 x 4 = 108 outcomes


@pytest.mark.parametrize("values", TWO_WAY_CASES, ids=["S2N3", "S3N2"])
def test_two_way_interval_matches_brute_force_enumeration_and_the_point_is_the_grand_mean(values):
    outcomes = all_resample_means(values)
    iv = group_interval(values, resamples=BIG, seed=1)
    assert iv.mean == values.mean()
    assert (iv.n_seeds, iv.n_problems) == values.shape
    assert_quantile_matches(iv.low, outcomes, 0.025, BIG)
    assert_quantile_matches(iv.high, outcomes, 0.975, BIG)
    assert iv.half_width == pytest.approx((iv.high - iv.low) / 2)
    # a one-way bootstrap (only seeds, or only problems) has other exact quantiles, so it would fail this test
    s, n = values.shape
    for one_way in ([values[list(r)].mean() for r in itertools.product(range(s), repeat=s)],
                    [values[:, list(c)].mean() for c in itertools.product(range(n), repeat=n)]):
        one_way = np.sort(one_way)
        assert abs(exact_quantile(one_way, 0.025) - iv.low) > 1 and abs(exact_quantile(one_way, 0.975) - iv.high) > 1


@pytest.mark.parametrize("values", TWO_WAY_CASES, ids=["S2N3", "S3N2"])
def test_two_way_bootstrap_distribution_matches_brute_force_enumeration(values):
    draws = bootstrap_means(values, resamples=BIG, seed=2)
    assert_distribution_matches(draws, all_resample_means(values), values.size, BIG)


def test_one_seed_is_a_plain_bootstrap_over_problems():
    v = np.array([0.0, 1.0, 3.0, 7.0])  # N=4: 4^4 = 256 equally likely column choices
    outcomes = np.sort([v[list(c)].mean() for c in itertools.product(range(4), repeat=4)])
    iv = group_interval(v, resamples=BIG, seed=3)
    assert iv == group_interval(v[None, :], resamples=BIG, seed=3)  # 1-D is S = 1
    assert (iv.mean, iv.n_seeds, iv.n_problems) == (v.mean(), 1, 4)
    assert_quantile_matches(iv.low, outcomes, 0.025, BIG)
    assert_quantile_matches(iv.high, outcomes, 0.975, BIG)
    assert_distribution_matches(bootstrap_means(v, resamples=BIG, seed=3), outcomes, 4, BIG)


def test_level_sets_the_quantiles():
    v = np.arange(50.0)
    wide, narrow = group_interval(v, level=0.99), group_interval(v, level=0.5)
    assert wide.low < narrow.low < v.mean() < narrow.high < wide.high
    draws = bootstrap_means(v, seed=0)
    assert (narrow.low, narrow.high) == tuple(np.quantile(draws, [0.25, 0.75]))


def test_exact_sign_flip_p_for_all_positive_differences_is_two_over_two_to_the_n():
    base = np.array([0.1, 0.9, 0.4, 0.7, 0.2, 0.5])  # a shared per-problem level that pairing removes
    for n in (5, 6):
        d = paired_difference(base[:n] + np.arange(1.0, n + 1), base[:n])
        assert d.p_exact
        assert d.p_value == 2 / 2 ** n  # only all-plus and all-minus reach |mean| >= the observed one
        assert d.mean == pytest.approx((n + 1) / 2)


def test_symmetric_differences_give_p_one():
    b = np.array([0.3, 0.3, 0.6, 0.6, 0.1, 0.1])
    d = paired_difference(b + np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5]), b)
    assert d.p_value == 1.0 and d.mean == pytest.approx(0.0)


def test_sign_flip_test_uses_differences_averaged_over_seeds():
    # seed 0 is positive on every problem, seed 1 negative; the seed averages are all positive
    diff = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [-0.5, -1.0, -1.0, -1.0, -1.0]])
    d = paired_difference(diff, np.zeros_like(diff))
    assert d.p_value == 2 / 32 and (d.n_seeds, d.n_problems) == (2, 5)


def test_identical_groups_give_p_one_and_a_zero_interval():
    a = np.random.default_rng(0).random((3, 40))
    d = paired_difference(a, a.copy())
    assert (d.mean, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_interval_is_the_two_way_bootstrap_of_the_differences():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 30)), rng.random((3, 30))
    d, g = paired_difference(a, b, seed=7), group_interval(a - b, seed=7)
    assert (d.mean, d.low, d.high) == (g.mean, g.low, g.high)


def test_paired_interval_is_narrower_than_unpaired_when_problems_share_a_large_effect():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0.0, 5.0, size=200)  # per-problem effect shared by both methods
    a = difficulty + 0.3 + rng.normal(0.0, 0.05, size=(3, 200))
    b = difficulty + rng.normal(0.0, 0.05, size=(3, 200))
    paired = paired_difference(a, b)
    # unpaired: a and b resampled independently (different problems in each replicate)
    unpaired = bootstrap_means(a, seed=1) - bootstrap_means(b, seed=2)
    u_low, u_high = np.quantile(unpaired, [0.025, 0.975])
    assert (paired.high - paired.low) * 10 < u_high - u_low
    assert paired.low > 0 and u_low < 0 < u_high  # only the paired comparison detects the +0.3
    assert paired.low < 0.3 < paired.high


def test_monte_carlo_p_detects_a_clear_effect_and_not_a_null_and_is_deterministic():
    rng = np.random.default_rng(6)
    b = rng.random((2, 40))
    effect = paired_difference(b + 0.2 + rng.normal(0.0, 0.1, size=(2, 40)), b)
    assert not effect.p_exact and effect.p_value < 0.01
    null = paired_difference(b + np.where(np.arange(40) % 2 == 0, 1.0, -1.0) * (1 + 0.01 * np.arange(40)), b)
    assert not null.p_exact and null.p_value > 0.5
    moderate_a = b + rng.normal(0.05, 0.3, size=(2, 40))
    first = paired_difference(moderate_a, b, seed=11)
    assert paired_difference(moderate_a, b, seed=11) == first  # same seed, same result
    assert paired_difference(moderate_a, b, seed=12).p_value != first.p_value  # the p-value is a Monte Carlo one


def test_monte_carlo_p_uses_the_plus_one_correction_and_agrees_with_enumeration():
    n = 17  # the smallest Monte Carlo size; 2^17 patterns can still be enumerated here
    positive = paired_difference(np.arange(1.0, n + 1), np.zeros(n), resamples=2000)
    assert positive.p_value == 1 / 2001  # exact p = 2 / 2^17: no random pattern reaches it, count = 0
    d = np.random.default_rng(8).normal(0.3, 1.0, size=n)
    signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    exact = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    mc = paired_difference(d, np.zeros(n), resamples=20_000, seed=9)
    assert not mc.p_exact and 0.05 < exact < 0.95
    assert abs(mc.p_value - exact) <= 5 * math.sqrt(exact * (1 - exact) / 20_000)
    assert round(mc.p_value * 20_001) == pytest.approx(mc.p_value * 20_001)  # (1 + count) / (1 + resamples)
    assert paired_difference(d[:16], np.zeros(16)).p_exact


def diff(low, high):
    return Difference((low + high) / 2, low, high, 1, 10, p_value=0.5, p_exact=True)


@pytest.mark.parametrize("low, high, higher_is_better, expected", [
    (0.1, 0.3, True, "cmdp better"),          # a - b > 0, higher is better: a wins
    (0.1, 0.3, False, "lagrangian better"),   # a - b > 0, lower is better (e.g. divergence): b wins
    (-0.3, -0.1, True, "lagrangian better"),
    (-0.3, -0.1, False, "cmdp better"),
    (-0.1, 0.3, True, "no detectable difference"),
    (-0.1, 0.3, False, "no detectable difference"),
    (0.0, 0.3, True, "no detectable difference"),  # touching 0 does not exclude it
    (0.0, 0.0, True, "no detectable difference"),
])
def test_verdict_reads_the_interval_and_the_direction(low, high, higher_is_better, expected):
    assert verdict(diff(low, high), higher_is_better, "cmdp", "lagrangian") == expected


def test_smooth_is_a_trailing_mean_that_keeps_the_length():
    y = [1.0, 2.0, 3.0, 4.0, 5.0]
    np.testing.assert_allclose(smooth(y, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(smooth(y, 3), [1.0, 1.5, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(smooth([4.0, 0.0, 2.0], 10), [4.0, 2.0, 2.0])  # window > len: running mean
    np.testing.assert_array_equal(smooth(y, 1), y)
    assert smooth([7.0], 5).tolist() == [7.0]


def test_band_is_the_seed_mean_and_min_max_envelope():
    mean, low, high = band([np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]), np.array([2.0, 5.0, 0.0])])
    np.testing.assert_allclose(mean, [2.0, 3.0, 4.0 / 3.0])
    np.testing.assert_array_equal(low, [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(high, [3.0, 5.0, 3.0])
    one = band([np.array([0.5, 0.25])])
    for x in one:
        np.testing.assert_array_equal(x, [0.5, 0.25])


@pytest.mark.parametrize("call, message", [
    (lambda: group_interval([]), "empty"),
    (lambda: group_interval(np.empty((2, 0))), "empty"),
    (lambda: group_interval(np.empty((0, 3))), "empty"),
    (lambda: group_interval([[1.0, np.nan]]), "NaN"),
    (lambda: group_interval(np.zeros((2, 2, 2))), "shape"),
    (lambda: group_interval([1.0, 2.0], level=0.0), "level"),
    (lambda: group_interval([1.0, 2.0], level=1.0), "level"),
    (lambda: group_interval([1.0, 2.0], level=1.5), "level"),
    (lambda: group_interval([1.0, 2.0], resamples=0), "resamples"),
    (lambda: paired_difference([1.0, np.nan], [1.0, 2.0]), "NaN"),
    (lambda: paired_difference([], []), "empty"),
    (lambda: paired_difference(np.zeros((2, 3)), np.zeros((1, 3))), "same"),
    (lambda: paired_difference(np.zeros(3), np.zeros(4)), "same"),
    (lambda: paired_difference([1.0, 2.0], [0.0, 0.0], level=-0.1), "level"),
    (lambda: smooth([], 3), "empty"),
    (lambda: smooth([1.0, np.nan], 3), "NaN"),
    (lambda: smooth([1.0, 2.0], 0), "window"),
    (lambda: band([]), "at least one"),
    (lambda: band([np.ones(3), np.ones(4)]), "equal length"),
    (lambda: band([np.array([1.0, np.nan])]), "NaN"),
])
def test_bad_input_raises_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
