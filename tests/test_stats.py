"""``cdistill.eval.stats``: the interval against a brute-force variance-components computation and against its
coverage in simulation, the t distribution against tables and a brute-force integral, one model for a difference's
interval and p-value, verdicts from adjusted p-values, curve smoothing and seed bands, and input validation.
(The declared verdicts under the null, Holm, equivalence and rates: tests/test_verdicts.py.)"""

import math

import numpy as np
import pytest

from cdistill.eval.stats import (
    PAIRED,
    RUNS,
    UNPAIRED,
    Difference,
    band,
    group_interval,
    holm,
    method_difference,
    paired_difference,
    smooth,
    t_quantile,
    t_sf,
    unpaired_difference,
    verdict,
    wilson_interval,
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


def brute_t_sf(t, df):
    """P(T > t) as a plain Simpson integral of Student's density over [t, t + 2000] (the tail left out is largest at
    2 degrees of freedom, 1.3e-7, inside the tolerance of the values compared)."""
    x = np.linspace(t, t + 2000.0, 2_000_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = c * (1 + x * x / df) ** (-(df + 1) / 2)
    h = x[1] - x[0]
    return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))


@pytest.mark.parametrize(("t", "df"), [(0.5, 2), (2.0, 3.5), (4.2426, 4), (2.0, 10), (6.0, 30), (1.0, 600)])
def test_t_tail_matches_a_brute_force_integral_and_closed_forms(t, df):
    assert t_sf(t, df) == pytest.approx(brute_t_sf(t, df), rel=1e-6, abs=1e-12)
    assert t_sf(-t, df) == pytest.approx(1 - t_sf(t, df))
    assert t_sf(1.0, 1) == pytest.approx(0.25)  # Cauchy: 1/2 - atan(1)/pi
    assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)))  # closed form at 2 degrees of freedom


def test_t_quantile_inverts_the_tail_the_p_values_use():
    for df in (1, 2.5, 7, 120):
        for p in (0.9, 0.975, 0.9995):
            assert t_sf(t_quantile(p, df), df) == pytest.approx(1 - p, rel=1e-9)


def test_one_run_p_value_is_the_t_test_over_problems():
    # differences 1..5 between two runs on five problems: mean 3, standard error sqrt(2.5 / 5), t = 4.2426 at 4 df
    d = paired_difference(np.arange(1.0, 6.0), np.zeros(5))
    assert d.model == RUNS and d.df == 4 and d.se == pytest.approx(math.sqrt(0.5))
    assert d.p_value == pytest.approx(2 * brute_t_sf(3 / math.sqrt(0.5), 4), rel=1e-6)
    assert d.p_value == pytest.approx(0.01324, abs=1e-5)  # the textbook two-sided p of t = 4.243 at 4 df


def test_symmetric_differences_give_p_one():
    b = np.array([0.3, 0.3, 0.6, 0.6, 0.1, 0.1])
    d = paired_difference(b + np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5]), b)
    assert d.p_value == 1.0 and d.mean == pytest.approx(0.0)


def test_the_p_value_counts_the_seeds_disagreement():
    # seed 0 positive on every problem, seed 1 negative: every seed-averaged difference is positive (a sign-flip test
    # over problems gave p = 2/32), but the methods' difference changes sign from seed to seed
    diff = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [-0.5, -1.0, -1.0, -1.0, -1.0]])
    d = paired_difference(diff, np.zeros_like(diff))
    assert d.model == PAIRED and d.p_value > 0.3 and d.low < 0 < d.high
    assert paired_difference(diff.mean(0), np.zeros(5)).p_value < 0.05  # the same numbers as one run: "these runs"


def test_identical_groups_give_p_one_and_a_zero_interval():
    a = np.random.default_rng(0).random((3, 40))
    d = paired_difference(a, a.copy())
    assert (d.mean, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_interval_is_the_interval_of_the_differences():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 30)), rng.random((3, 30))
    d, g = paired_difference(a, b), group_interval(a - b)
    assert (d.mean, d.low, d.high) == pytest.approx((g.mean, g.low, g.high), abs=1e-12)


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


def test_unpaired_difference_adds_both_seed_variances_and_pairs_the_problems():
    rng = np.random.default_rng(6)
    a, b = rng.random((3, 20)), rng.random((4, 20))
    d = unpaired_difference(a, b)
    parts = [(a.mean(1).var(ddof=1) / 3, 2), (b.mean(1).var(ddof=1) / 4, 3),
             ((a.mean(0) - b.mean(0)).var(ddof=1) / 20, 19)]
    var = sum(v for v, _ in parts)
    assert d.model == UNPAIRED and d.mean == pytest.approx(a.mean() - b.mean())
    assert d.se == pytest.approx(math.sqrt(var)) and d.df == pytest.approx(var**2 / sum(v**2 / k for v, k in parts))


@pytest.mark.parametrize(("shape_a", "seeds_a", "seeds_b", "model", "used"), [
    ((3, 3), [0, 1, 2], [1, 2, 3], PAIRED, ((1, 2), (1, 2))),  # two common seeds: paired on them
    ((3, 3), [0, 1, 2], [3, 4, 5], UNPAIRED, ((0, 1, 2), (3, 4, 5))),
    ((3, 3), [0, 1, 2], [2, 3, 4], UNPAIRED, ((0, 1, 2), (2, 3, 4))),  # one common seed is not a pairing
    ((1, 3), [0], [0, 1, 2], RUNS, ((0,), (0,))),  # one seed a side: the runs of the common seed
    ((1, 3), [7], [0, 1, 2], RUNS, ((7,), (0, 1, 2))),
    ((2, 2), [None, None], [None, None], UNPAIRED, ((None, None), (None, None))),  # unknown seeds are never paired
])
def test_the_seeds_choose_the_model(shape_a, seeds_a, seeds_b, model, used):
    rng = np.random.default_rng(7)
    a, b = rng.random((shape_a[0], 10)), rng.random((shape_a[1], 10))
    d = method_difference(a, b, seeds_a, seeds_b)
    assert (d.model, (d.seeds_a, d.seeds_b)) == (model, used)


@pytest.mark.parametrize("model", [PAIRED, UNPAIRED, RUNS])
def test_interval_and_p_value_come_from_one_model(model):
    # the interval at level 1 - p touches 0, and the 95% interval excludes 0 exactly when p < 0.05
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.05, 0.1, 0.3):
        a = rng.random((1 if model == RUNS else 3, 50)) + shift
        b = rng.random((3, 50))
        d = method_difference(a, b, [0] if model == RUNS else [0, 1, 2], [3, 4, 5] if model == UNPAIRED else [0, 1, 2])
        assert d.model == model
        low, high = d.bounds(1 - d.p_value)
        assert min(abs(low), abs(high)) == pytest.approx(0.0, abs=1e-9)
        assert (d.p_value < 0.05) == (d.low > 0 or d.high < 0)


def test_holm_adjusts_by_the_comparisons_still_in_play():
    adjusted, none = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02]) and none is None


def result(mean, model=PAIRED):
    return Difference(mean, 0.01, 10.0, 100, model)


@pytest.mark.parametrize(("mean", "p_adj", "p_eq", "higher_is_better", "expected"), [
    (0.2, 0.01, None, True, "cmdp better"),          # a - b > 0, higher is better: a wins
    (0.2, 0.01, None, False, "lagrangian better"),   # a - b > 0, lower is better (e.g. divergence): b wins
    (-0.2, 0.01, None, True, "lagrangian better"),
    (-0.2, 0.01, None, False, "cmdp better"),
    (0.2, 0.06, None, True, "no detectable difference"),  # adjusted p above alpha
    (0.2, 0.05, None, True, "cmdp better"),  # at alpha exactly: declared
    (0.01, 0.3, 0.01, True, "equivalent within ±0.02"),
    (0.01, 0.3, 0.2, True, "no detectable difference"),  # neither: not "equal"
    (0.015, 0.01, 0.01, True, "cmdp better (by less than the margin ±0.02)"),
])
def test_verdict_reads_the_adjusted_p_values_and_the_direction(mean, p_adj, p_eq, higher_is_better, expected):
    assert verdict(result(mean), higher_is_better, "cmdp", "lagrangian", p_adjusted=p_adj, alpha=0.05,
                   p_equivalence_adjusted=p_eq, margin=0.02) == expected


def test_one_seed_gets_no_method_verdict_whatever_its_p():
    text = verdict(result(0.5, RUNS), True, "cmdp", "grpo", p_adjusted=1e-9, alpha=0.05)
    assert "better" not in text and "these two runs" in text


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
    (lambda: paired_difference([1.0, np.nan], [1.0, 2.0]), "NaN"),
    (lambda: paired_difference([], []), "empty"),
    (lambda: paired_difference(np.zeros((2, 3)), np.zeros((1, 3))), "same"),
    (lambda: paired_difference(np.zeros(3), np.zeros(4)), "same"),
    (lambda: paired_difference([1.0, 2.0], [0.0, 0.0], level=-0.1), "level"),
    (lambda: unpaired_difference(np.zeros((1, 3)), np.zeros((2, 3))), "two seeds"),
    (lambda: unpaired_difference(np.zeros((2, 3)), np.zeros((2, 4))), "same problems"),
    (lambda: method_difference(np.zeros((2, 3)), np.zeros((2, 3)), [0], [0, 1]), "one seed per row"),
    (lambda: holm([0.1, 1.5]), "p-values"),
    (lambda: holm([0.1, 0.2], [0.1]), "equivalence"),
    (lambda: wilson_interval(1.5, 10), "p in"),
    (lambda: wilson_interval(0.5, 0), "n >= 1"),
    (lambda: result(0.0).equivalence_p(0.0), "margin"),
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
