"""Uncertainty for comparing training runs: intervals over seeds and problems, differences between two groups of
runs under one t model (interval and p-value alike), Holm's correction with equivalence tests for the comparisons
declared before the runs, and the smoothing and seed bands of training curves.

Every run of a comparison evaluated the same N held-out problems, so a group of replicate runs (same configuration,
different seeds) gives a matrix ``values[S, N]``: one row per seed, one column per problem, each entry a per-problem
metric (mean correctness over the problem's sampled completions, satisfaction, divergence ...). Both seeds and
problems are samples from larger populations, so the intervals here count the variance from both (variance
components with Student's t, ``group_interval``). The question a comparison answers is "do these *methods* differ",
so a difference between two groups keeps the seed-to-seed variance in its standard error (``method_difference``):
a group of one seed answers only "do these two trained models differ" (model ``"runs"``) and gets no method verdict.

Pure numpy (no scipy), and deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

PAIRED, UNPAIRED, RUNS = "paired", "unpaired", "runs"  # the models of a Difference (see method_difference)


@dataclass(frozen=True)
class Interval:
    """A point estimate and a two-sided interval ``[low, high]`` around it (``group_interval``)."""

    mean: float
    low: float
    high: float
    n_seeds: int
    n_problems: int

    @property
    def half_width(self) -> float:
        """Half the interval's width, ``(high - low) / 2`` (the "±" of a table cell)."""
        return (self.high - self.low) / 2


def _array(values, name: str, dims: tuple[int, ...], shape_text: str) -> np.ndarray:
    """``values`` as float64 with one of ``dims`` dimensions, rejecting empty and non-finite input in one line."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim not in dims:
        raise ValueError(f"{name} must be {shape_text}, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf at {np.argwhere(~np.isfinite(x))[0].tolist()}")
    return x


def _matrix(values, name: str = "values") -> np.ndarray:
    """``values`` as a float64 [S, N] matrix (a 1-D array is one seed)."""
    x = _array(values, name, (1, 2), "a 1-D [N] or 2-D [seeds, problems] array")
    return x[None, :] if x.ndim == 1 else x


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; converges fast for
    x < (a + 1) / (a + b + 2), where ``_betainc`` calls it)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom: the incomplete beta
    function, I_{df/(df+t²)}(df/2, 1/2) / 2 (accurate in the far tail, where p-values of a Holm correction live);
    ``df = inf`` gives the normal's."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if t < 0:
        return 1.0 - t_sf(-t, df)
    if math.isinf(df) or df > 1e7:
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    return 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom, for p in (0.5, 1):
    bisection on ``t_sf``, so an interval and the p-value beside it come from the same distribution function;
    ``df = inf`` gives the normal's."""
    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs p in (0.5, 1), got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(df) or df > 1e7:
        return normal_quantile(p)
    tail = 1.0 - p
    low, high = 0.0, 1.0
    while t_sf(high, df) > tail:
        low, high = high, high * 2
    while high - low > 1e-13 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if t_sf(mid, df) > tail else (low, mid)
    return (low + high) / 2


def normal_quantile(p: float) -> float:
    """The p-quantile of the standard normal, for p in (0, 1)."""
    if not 0 < p < 1:
        raise ValueError(f"normal_quantile needs p in (0, 1), got {p}")
    return float(np.sqrt(2.0) * _erfinv(2 * p - 1))


def _erfinv(y: float) -> float:
    """Inverse error function by Newton's method on math.erf."""
    x = 0.0
    for _ in range(100):
        step = (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
        x -= step
        if abs(step) < 1e-15:
            break
    return x


def variance_components(x: np.ndarray) -> tuple[float, float, float]:
    """(variance of the grand mean from the seeds, from the problems, Welch–Satterthwaite degrees of freedom).

    With every seed evaluated on the same problems, a per-problem value is y_sj = μ + a_s + b_j + e_sj. The seed
    means vary by a_s + ē_s (the problem effects are shared and cancel), the problem means (over seeds) by
    b_j + ē_j, so ``var(seed means) / S + var(problem means) / N`` estimates the variance of the grand mean,
    counting the residual e twice (on the safe side: at most by σ_e² / (S N)). Each part has its own degrees of
    freedom (S − 1, N − 1); the sum's are Welch–Satterthwaite's.
    """
    s, n = x.shape
    var_seed = float(x.mean(1).var(ddof=1)) / s if s > 1 else 0.0
    var_problem = float(x.mean(0).var(ddof=1)) / n if n > 1 else 0.0
    return (var_seed, var_problem, _welch([(var_seed, s - 1), (var_problem, n - 1)])[1])


def _welch(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """(sum of independent variance estimates, Welch–Satterthwaite degrees of freedom) from ``(variance, df)``
    pairs; a part with no degrees of freedom must be 0. All zero: (0, inf)."""
    total = sum(v for v, _ in parts)
    if total == 0:
        return 0.0, math.inf
    return total, total**2 / sum(v**2 / k for v, k in parts if k > 0 and v > 0)


def group_interval(values, level: float = 0.95) -> Interval:
    """The grand mean of ``values[S, N]`` (S seeds x N problems; a 1-D array is S = 1) and its interval.

    The interval is ``mean ± t · sqrt(V)``: V the variance of the grand mean from both sources, the training
    seeds and the choice of problems (``variance_components``), and t the Student quantile at the Welch–
    Satterthwaite degrees of freedom. With few seeds the seed part has few degrees of freedom and the interval
    widens accordingly (t = 4.30 at 2 degrees of freedom): a percentile bootstrap over 3 seeds cannot reach past
    the seeds' range, and covered a 95% target only 87-92% of the time in simulations like tests/test_stats.py's.
    With S = 1 it is the usual t-interval over problems (seed variation is then unseen). All values equal: a
    zero-width interval (for a rate, ``rate_interval`` does not collapse).
    """
    x = _matrix(values)
    _check_level(level)
    var_seed, var_problem, df = variance_components(x)
    mean = float(x.mean())
    half = t_quantile((1 + level) / 2, df) * math.sqrt(var_seed + var_problem) if df < math.inf else 0.0
    return Interval(mean, mean - half, mean + half, x.shape[0], x.shape[1])


def wilson_interval(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` of ``n`` trials: inside [0, 1], and of positive width at
    p = 0 or 1 (0 of 16 gives [0, 0.194] at 95%), where the Wald and t intervals collapse to a point."""
    _check_level(level)
    if not 0 <= p <= 1 or n < 1:
        raise ValueError(f"wilson_interval needs p in [0, 1] and n >= 1, got p={p}, n={n}")
    z = normal_quantile((1 + level) / 2)
    return _wilson(p, n, z)


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    # exact at the ends (the formula leaves a rounding error of 1e-17 there)
    return (0.0 if p == 0 else max(0.0, centre - half)), (1.0 if p == 1 else min(1.0, centre + half))


def rate_interval(values, level: float = 0.95) -> Interval:
    """``group_interval`` for a rate (values in [0, 1]: accuracy, satisfied, never exceeded, success), which must not
    claim certainty from a finite sample: where the variance estimate is 0 (every value equal: 0 of 16 right on every
    seed and problem) it gets Wilson's score interval instead, with n = N, the number of problems; every interval is
    clipped to [0, 1]; so does one run whose t-interval over problems would leave [0, 1]. Elsewhere one run's interval
    is the t-interval over its problems, as for any metric.

    Why n = N and not the number of samples: a problem's samples share its difficulty and are not independent trials,
    and seeds re-evaluate the same problems. A per-problem rate m_j lies in [0, 1], so its variance is at most
    m(1 − m): the binomial variance m(1 − m) / N bounds the variance of a mean over N problems from above, and the
    Wilson interval at n = N is conservative (wider than the t-interval over problems when the problems' rates
    cluster, e.g. 4 samples each of an even coin).
    """
    x = _matrix(values)
    _check_level(level)
    if np.any((x < 0) | (x > 1)):
        raise ValueError("a rate's values must lie in [0, 1]")
    s, n = x.shape
    mean = float(x.mean())
    g = group_interval(x, level) if x.min() != x.max() else None
    # Wilson where the t-interval says nothing (zero variance) or, for one run, where its normal approximation
    # leaves [0, 1] (a rate near 0 or 1 on few problems)
    if g is None or (s == 1 and (g.low < 0 or g.high > 1)):
        low, high = wilson_interval(mean, n, level)
        return Interval(mean, low, high, s, n)
    return Interval(mean, max(0.0, g.low), min(1.0, g.high), s, n)


@dataclass(frozen=True)
class Difference:
    """``mean = mean(A) − mean(B)`` over seeds and problems, with the standard error ``se`` and the degrees of
    freedom ``df`` of one t model: the interval (``bounds``, ``low`` / ``high`` at ``level``), the two-sided
    ``p_value`` of "no difference" and the equivalence test (``equivalence_p``) all read the same t = mean / se.

    ``model`` says what the standard error counts (``method_difference``): ``"paired"`` (A's and B's runs of the
    same seeds, differences over seeds and problems), ``"unpaired"`` (no common seed: both groups' seed variances
    and the problems' variance of the difference), ``"runs"`` (a side with one seed: over problems only, which
    answers whether these trained models differ, not whether the methods do). ``seeds_a`` / ``seeds_b``: the seeds
    whose runs it used. ``rates``: for a rate whose estimated variance is 0 (every per-problem difference equal),
    ``(rate of A, rate of B, N)``: the interval is then Newcombe's hybrid score interval from the two Wilson
    intervals at n = N (see ``rate_interval``) and the p-values invert it, instead of a zero-width t interval that
    would claim certainty.
    """

    mean: float
    se: float
    df: float
    n_problems: int
    model: str
    seeds_a: tuple = ()
    seeds_b: tuple = ()
    level: float = 0.95
    rates: tuple | None = field(default=None)

    def bounds(self, level: float) -> tuple[float, float]:
        """The two-sided ``level`` interval of the same model."""
        _check_level(level)
        if self.rates is not None:
            return self._newcombe(normal_quantile((1 + level) / 2))
        if self.se == 0:
            return self.mean, self.mean
        half = t_quantile((1 + level) / 2, self.df) * self.se
        return self.mean - half, self.mean + half

    @cached_property
    def _interval(self) -> tuple[float, float]:
        return self.bounds(self.level)

    @property
    def low(self) -> float:
        return self._interval[0]

    @property
    def high(self) -> float:
        return self._interval[1]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @cached_property
    def p_value(self) -> float:
        """Two-sided p of "A and B do not differ" under the same model: 2 P(T_df > |mean| / se); with ``rates``, the
        largest level whose Newcombe interval still contains 0, inverted (one minus it)."""
        if self.mean == 0:
            return 1.0
        if self.rates is not None:
            sign = 1.0 if self.mean > 0 else -1.0  # the bound that moves towards 0 as the level grows
            z = self._solve(lambda z: sign * self._newcombe(z)[0 if sign > 0 else 1] > 0)
            return math.erfc(z / math.sqrt(2.0))  # 1 − the two-sided level of z
        if self.se == 0:
            return 0.0
        return min(1.0, 2 * t_sf(abs(self.mean) / self.se, self.df))

    def equivalence_p(self, margin: float) -> float:
        """The p-value of the two one-sided tests (TOST) of "|A − B| >= margin": the larger of the two one-sided
        p's, so it is at most alpha exactly when the (1 − 2 alpha) interval lies inside (−margin, margin)."""
        if not margin > 0:
            raise ValueError(f"the equivalence margin must be positive, got {margin}")
        if abs(self.mean) >= margin:
            return 1.0
        if self.rates is not None:
            z = self._solve(lambda z: -margin < self._newcombe(z)[0] and self._newcombe(z)[1] < margin)
            return 0.5 * math.erfc(z / math.sqrt(2.0))  # the (1 − 2 alpha) interval has z = z_(1 − alpha)
        if self.se == 0:
            return 0.0
        return max(t_sf((self.mean + margin) / self.se, self.df), t_sf((margin - self.mean) / self.se, self.df))

    def _newcombe(self, z: float) -> tuple[float, float]:
        pa, pb, n = self.rates
        la, ua = _wilson(pa, n, z)
        lb, ub = _wilson(pb, n, z)
        return self.mean - math.hypot(pa - la, ub - pb), self.mean + math.hypot(ua - pa, pb - lb)

    @staticmethod
    def _solve(holds) -> float:
        """The largest z in [0, 40] at which ``holds(z)`` (true at 0, false beyond the root, monotone) still holds."""
        low, high = 0.0, 40.0
        if holds(high):
            return high
        for _ in range(80):
            mid = (low + high) / 2
            low, high = (mid, high) if holds(mid) else (low, mid)
        return low


def _difference(mean: float, var: float, df: float, n: int, model: str, a: np.ndarray, b: np.ndarray, rate: bool,
                seeds_a, seeds_b, level: float) -> Difference:
    rates = (float(a.mean()), float(b.mean()), n) if rate and var == 0 else None
    return Difference(mean, math.sqrt(var), df, n, model, tuple(seeds_a), tuple(seeds_b), level, rates)


def paired_difference(a, b, level: float = 0.95, rate: bool = False, seeds: tuple = ()) -> Difference:
    """``mean(a − b)`` for two groups evaluated on the same problems with the same seeds.

    ``a`` and ``b`` are [S, N] (or 1-D [N]) with row i of both from seed i and column j of both from problem j; the
    caller aligns them. The model is ``variance_components`` of the differences d = a − b: the seed term counts how
    the methods' difference varies from seed to seed, the problem term how it varies from problem to problem (effects
    shared by a and b, such as a problem's difficulty, cancel); t = mean / se at their Welch–Satterthwaite degrees
    of freedom. With S = 1 only the problem term exists: the model is ``"runs"`` (these two trained models differ or
    not; a method verdict needs seeds). ``rate``: the values are rates (see ``Difference.rates``).
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same [seeds, problems] shape, got {x.shape} and {y.shape}")
    _check_level(level)
    d = x - y
    s, n = d.shape
    var_seed, var_problem, df = variance_components(d)
    return _difference(float(d.mean()), var_seed + var_problem, df, n, PAIRED if s > 1 else RUNS, x, y, rate, seeds,
                       seeds, level)


def unpaired_difference(a, b, level: float = 0.95, rate: bool = False, seeds_a: tuple = (),
                        seeds_b: tuple = ()) -> Difference:
    """``mean(a) − mean(b)`` for two groups of different seeds (at least two each) evaluated on the same problems.

    The seeds are independent draws, so the two groups' seed variances of the mean add: var(A's seed means) / S_a +
    var(B's seed means) / S_b (each with its S − 1 degrees of freedom). The problems are the same, so the problem
    term is paired: var over problems of (A's mean on the problem − B's) / N (N − 1 degrees of freedom), in which a
    problem's difficulty cancels. Student's t at the three parts' Welch–Satterthwaite degrees of freedom. Averaging
    each group over its seeds and comparing problem by problem instead would drop the seed variance (a null
    false-verdict rate of 34% with 3 seeds a side).
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must cover the same problems, got {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"an unpaired difference needs at least two seeds a side, got {x.shape[0]} and {y.shape[0]}")
    _check_level(level)
    sa, sb, n = x.shape[0], y.shape[0], x.shape[1]
    parts = [(float(x.mean(1).var(ddof=1)) / sa, sa - 1), (float(y.mean(1).var(ddof=1)) / sb, sb - 1),
             (float((x.mean(0) - y.mean(0)).var(ddof=1)) / n if n > 1 else 0.0, n - 1)]
    var, df = _welch(parts)
    return _difference(float(x.mean() - y.mean()), var, df, n, UNPAIRED, x, y, rate, seeds_a, seeds_b, level)


def method_difference(a, b, seeds_a: list, seeds_b: list, level: float = 0.95, rate: bool = False) -> Difference:
    """A − B for two replicate groups, with the model their seeds allow; ``a[i]`` is the run of ``seeds_a[i]``
    (None: a seed not recorded, never paired), the columns the same problems.

    - at least two common seeds: ``paired_difference`` of the common seeds' runs (the others left out: pairing
      removes what two runs of one seed share, and needs both);
    - otherwise, at least two seeds a side: ``unpaired_difference`` of all runs;
    - otherwise (a side with one seed): model ``"runs"``, a t-interval over problems of the per-problem differences
      (of the one common seed's two runs, or of each side's mean over its seeds): it says whether these trained
      models differ, and cannot say whether the methods do, since a method's seed-to-seed variation is unseen.
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape[0] != len(seeds_a) or y.shape[0] != len(seeds_b):
        raise ValueError(f"one seed per row: {x.shape[0]} rows and {len(seeds_a)} seeds, {y.shape[0]} and "
                         f"{len(seeds_b)}")
    common = [s for s in seeds_a if s is not None and s in seeds_b]
    if len(common) >= 2 or (common and (x.shape[0] == 1 or y.shape[0] == 1)):
        ia, ib = [list(seeds_a).index(s) for s in common], [list(seeds_b).index(s) for s in common]
        return paired_difference(x[ia], y[ib], level, rate, tuple(common))
    if x.shape[0] >= 2 and y.shape[0] >= 2:
        return unpaired_difference(x, y, level, rate, tuple(seeds_a), tuple(seeds_b))
    d = paired_difference(x.mean(0), y.mean(0), level, rate)
    return Difference(d.mean, d.se, d.df, d.n_problems, RUNS, tuple(seeds_a), tuple(seeds_b), level,
                      (float(x.mean()), float(y.mean()), d.n_problems) if d.rates else None)


def holm(p_values: list[float], equivalence_p: list[float | None] | None = None) -> tuple[list[float], list]:
    """Holm's step-down adjusted p-values for a family of m comparisons: sorted ascending, p_(i) is multiplied by the
    number of comparisons still in play, m − i + 1, and the running maximum taken (capped at 1). A comparison is
    declared when its adjusted p <= alpha; the chance of any false declaration is then at most alpha whatever the
    dependence between the comparisons.

    With ``equivalence_p`` (one TOST p per comparison, or None), each comparison holds two hypotheses, "no
    difference" and "a difference of at least the margin", of which at most one can be true; the two kinds are
    stepped down together, and the multiplier of each step is the number of comparisons with a hypothesis not yet
    rejected (Shaffer's logically constrained Holm: at most that many hypotheses can still be true). Without
    equivalence tests this is Holm's procedure exactly. Returns (adjusted difference p's, adjusted equivalence p's
    or None), in the input order.
    """
    m = len(p_values)
    eq = list(equivalence_p) if equivalence_p is not None else [None] * m
    if len(eq) != m:
        raise ValueError(f"{m} difference p-values but {len(eq)} equivalence p-values")
    hyps = [(p, k, 0) for k, p in enumerate(p_values)] + [(p, k, 1) for k, p in enumerate(eq) if p is not None]
    for p, _, _ in hyps:
        if not 0 <= p <= 1:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    hyps.sort(key=lambda h: (h[0], h[2], h[1]))
    remaining = {}
    for _, k, _ in hyps:
        remaining[k] = remaining.get(k, 0) + 1
    adjusted: list[list] = [[None] * m, [None] * m]
    running = 0.0
    for p, k, kind in hyps:
        in_play = sum(1 for c in remaining.values() if c > 0)  # comparisons with a hypothesis not yet stepped past
        running = max(running, min(1.0, in_play * p))
        adjusted[kind][k] = running
        remaining[k] -= 1
    return adjusted[0], (adjusted[1] if equivalence_p is not None else None)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one declared comparison: ``text`` ("<A> better", "<B> better", "equivalent within ±m",
    "no detectable difference", or no method verdict for a side with one seed), and the adjusted p-values that
    decided it (None where the comparison was not tested)."""

    text: str
    p_holm: float | None = None
    p_equivalence: float | None = None
    p_equivalence_holm: float | None = None

    @property
    def tested(self) -> bool:
        return self.p_holm is not None


NO_METHOD_VERDICT = "no method verdict (one seed: these two runs)"


def verdict(diff: Difference, higher_is_better: bool, a_name: str, b_name: str, *, p_adjusted: float, alpha: float,
            p_equivalence_adjusted: float | None = None, margin: float | None = None) -> str:
    """The words for ``diff = a − b`` given its adjusted p-values (``holm``).

    A side is better when the adjusted p of "no difference" is at most ``alpha`` (which side wins depends on the sign
    and ``higher_is_better``); the two are "equivalent within ±margin" when instead the adjusted TOST p is (the
    (1 − 2·alpha_adjusted) interval lies inside ±margin); otherwise "no detectable difference", which is not a claim
    of equality. A difference detected inside the margin says both. A side with one seed: no method verdict.
    """
    if diff.model == RUNS:
        return NO_METHOD_VERDICT
    equivalent = margin is not None and p_equivalence_adjusted is not None and p_equivalence_adjusted <= alpha
    if p_adjusted <= alpha and diff.mean != 0:
        winner = a_name if (diff.mean > 0) == higher_is_better else b_name
        return f"{winner} better" + (f" (by less than the margin ±{margin:g})" if equivalent else "")
    if equivalent:
        return f"equivalent within ±{margin:g}"
    return "no detectable difference"


def declared_verdicts(diffs: list[Difference], higher_is_better: bool, names: list[tuple[str, str]], alpha: float,
                      margin: float | None = None) -> list[Verdict]:
    """The verdicts of a declared family of comparisons A − B on one primary metric at family-wise level ``alpha``:
    Holm's correction (``holm``, with the TOST at ``margin`` when given) across the comparisons that can be tested at
    the level of methods; a comparison with a side of one seed (model ``"runs"``) is not tested, is not counted in
    the family, and gets no method verdict."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tested = [i for i, d in enumerate(diffs) if d.model != RUNS]
    p = [diffs[i].p_value for i in tested]
    eq = [diffs[i].equivalence_p(margin) for i in tested] if margin is not None else None
    adj, adj_eq = holm(p, eq)
    out = [Verdict(NO_METHOD_VERDICT) for _ in diffs]
    for j, i in enumerate(tested):
        e = None if adj_eq is None else adj_eq[j]
        text = verdict(diffs[i], higher_is_better, *names[i], p_adjusted=adj[j], alpha=alpha, p_equivalence_adjusted=e,
                       margin=margin)
        out[i] = Verdict(text, adj[j], None if eq is None else eq[j], e)
    return out


def _curve(y, name: str = "y") -> np.ndarray:
    return _array(y, name, (1,), "a 1-D curve")


def smooth(y, window: int) -> np.ndarray:
    """Trailing moving average of a training curve, the same length as ``y``: ``out[i]`` is the mean of
    ``y[max(0, i - window + 1) : i + 1]``, so the first points average what exists so far (a window longer than
    the curve gives the running mean). ``window = 1`` returns ``y`` unchanged (as float64)."""
    x = _curve(y)
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    window = int(window)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, x.size + 1)
    start = np.maximum(0, i - window)
    return (c[i] - c[start]) / (i - start)


def band(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` at each step over replicate curves of equal length (one per seed): the mean across
    seeds and the min-max envelope across seeds (``low`` the pointwise minimum, ``high`` the maximum). It is a
    descriptive range of the seeds seen, not a confidence interval (a t-interval would need scipy); with one curve
    the band collapses onto it."""
    if len(curves) == 0:
        raise ValueError("band needs at least one curve")
    xs = [_curve(c, f"curve {i}") for i, c in enumerate(curves)]
    lengths = {x.size for x in xs}
    if len(lengths) > 1:
        raise ValueError(f"curves must have equal length, got lengths {sorted(lengths)}")
    m = np.stack(xs)
    return m.mean(0), m.min(0), m.max(0)
