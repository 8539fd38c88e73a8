"""``cdistill.eval.stats``: the interval against a brute-force variance-components computation and against its
coverage in simulation, the paired sign-flip test against hand-counted p-values, verdicts, curve smoothing and
seed bands, and input validation."""

import math

import numpy as np
import pytest

from cdistill.eval.stats import (
    Difference,
    band,
    group_interval,
    paired_difference,
    smooth,
    t_quantile,
    verdict,
)


@pytest.mark.parametrize(("df", "want"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                                          (math.inf, 1.9600)])
def test_t_quantile_matches_the_table(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-4)


def brute_interval(values, level=0.95):
    """The interval spelled out with loops: seed means and problem means, their variances, Welch-Satterthwaite."""
    s, n = len(values), len(values[0])
    grand = sum(sum(row) for row in values) / (s * n)
    seed_means = [sum(row) / n for row in values]
    problem_means = [sum(values[i][j] for i in range(s)) / s for j in range(n)]

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)

    v_seed = var(seed_means) / s if s > 1 else 0.0
    v_problem = var(problem_means) / n
    df = (v_seed + v_problem) ** 2 / ((v_seed**2 / (s - 1) if s > 1 else 0.0) + v_problem**2 / (n - 1))
    half = t_quantile((1 + level) / 2, df) * math.sqrt(v_seed + v_problem)
    return grand, grand - half, grand + half


@pytest.mark.parametrize("values", [
    [[0.0, 1.0, 4.0], [9.0, 16.0, 25.0]],
    [[0.0, 7.0], [3.0, 12.0], [4.0, 20.0]],
    [[0.5, 0.25, 1.0, 0.0, 0.75]],  # one seed: the t-interval over problems
])
def test_interval_matches_a_brute_force_computation(values):
    got = group_interval(np.array(values))
    assert (got.mean, got.low, got.high) == pytest.approx(brute_interval(values), abs=1e-12)
    assert got.n_seeds == len(values) and got.n_problems == len(values[0])


def test_one_seed_is_the_t_interval_over_problems():
    x = np.array([0.0, 1.0, 1.0, 0.5, 0.25, 0.75])
    got = group_interval(x)
    half = t_quantile(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    assert (got.low, got.high) == pytest.approx((x.mean() - half, x.mean() + half))


def test_interval_covers_the_mean_95_percent_of_the_time_with_three_seeds():
    # y_sj = mu + seed effect + problem effect + noise, as three training seeds evaluated on the same 200 problems
    # make it; every replicate draws new seeds and new problems. A percentile bootstrap covered ~0.92 here.
    rng = np.random.default_rng(0)
    sims, s, n, mu = 1500, 3, 200, 0.5
    covered = 0
    for _ in range(sims):
        y = (mu + rng.normal(0, 0.04, size=(s, 1)) + rng.normal(0, 0.25, size=(1, n))
             + rng.normal(0, 0.2, size=(s, n)))
        iv = group_interval(y)
        covered += iv.low <= mu <= iv.high
    # 1500 replicates: a standard error of 0.0056 around 0.95
    assert 0.935 <= covered / sims <= 0.985


def test_level_sets_the_width():
    x = np.random.default_rng(1).random((3, 40))
    widths = [group_interval(x, level=lv).half_width for lv in (0.5, 0.8, 0.95, 0.99)]
    assert widths == sorted(widths) and widths[0] > 0


def test_equal_values_give_a_zero_width_interval():
    iv = group_interval(np.full((3, 10), 0.25))
    assert (iv.mean, iv.low, iv.high) == (0.25, 0.25, 0.25)


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


def test_paired_interval_is_the_interval_of_the_differences():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 30)), rng.random((3, 30))
    d, g = paired_difference(a, b, seed=7), group_interval(a - b)
    assert (d.mean, d.low, d.high) == (g.mean, g.low, g.high)


def test_paired_interval_is_narrower_than_unpaired_when_problems_share_a_large_effect():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0.0, 5.0, size=200)  # per-problem effect shared by both methods
    a = difficulty + 0.3 + rng.normal(0.0, 0.05, size=(3, 200))
    b = difficulty + rng.normal(0.0, 0.05, size=(3, 200))
    paired = paired_difference(a, b)
    # unpaired: the two groups' intervals, as if they had been evaluated on different problems
    ia, ib = group_interval(a), group_interval(b)
    unpaired_half = math.hypot(ia.half_width, ib.half_width)
    assert paired.half_width * 10 < unpaired_half
    assert paired.low > 0 and abs(ia.mean - ib.mean) < unpaired_half  # only the paired comparison detects +0.3
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
    (lambda: paired_difference([1.0, 2.0], [0.0, 0.0], resamples=0), "resamples"),
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
