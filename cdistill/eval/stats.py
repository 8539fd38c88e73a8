"""Uncertainty for comparing training runs: intervals over seeds and problems, paired differences with a sign-flip
p-value, a verdict string, and the smoothing and seed bands of training curves.

Every run of a comparison evaluated the same N held-out problems, so a group of replicate runs (same configuration,
different seeds) gives a matrix ``values[S, N]``: one row per seed, one column per problem, each entry a per-problem
metric (mean correctness over the problem's sampled completions, satisfaction, divergence ...). Both seeds and
problems are samples from larger populations, so the intervals here count the variance from both (variance
components with Student's t, ``group_interval``).

Pure numpy (no scipy), and deterministic given ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EXACT_SIGN_FLIP_MAX_N = 16  # up to this many problems the sign-flip test enumerates all 2^N sign patterns
_CHUNK_ELEMENTS = 1 << 22  # random sign patterns are drawn in chunks of about this many signs (bounds memory)


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


@dataclass(frozen=True)
class Difference(Interval):
    """``mean(a - b)`` with its interval over seeds and problems and a paired sign-flip ``p_value`` (two-sided);
    ``p_exact`` says whether the p-value enumerated every sign pattern (N <= 16) or is a Monte Carlo estimate."""

    p_value: float
    p_exact: bool


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


def _check(level: float, resamples: int) -> None:
    _check_level(level)
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples}")


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom, for p in (0.5, 1):
    bisection on the CDF, itself a Simpson integral of the density (no scipy); ``df = inf`` gives the normal's."""
    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs p in (0.5, 1), got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(df) or df > 1e7:
        return float(np.sqrt(2.0) * _erfinv(2 * p - 1))
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # P(T <= t) for t >= 0: 1/2 + the density's integral over [0, t]
        x = np.linspace(0.0, t, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        return 0.5 + (t / 12000) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def _erfinv(y: float) -> float:
    """Inverse error function by Newton's method on math.erf (for the normal quantile of t_quantile)."""
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
    total = var_seed + var_problem
    if total == 0:
        return 0.0, 0.0, math.inf
    denom = (var_seed**2 / (s - 1) if s > 1 else 0.0) + (var_problem**2 / (n - 1) if n > 1 else 0.0)
    return var_seed, var_problem, total**2 / denom


def group_interval(values, level: float = 0.95) -> Interval:
    """The grand mean of ``values[S, N]`` (S seeds x N problems; a 1-D array is S = 1) and its interval.

    The interval is ``mean ± t · sqrt(V)``: V the variance of the grand mean from both sources, the training
    seeds and the choice of problems (``variance_components``), and t the Student quantile at the Welch–
    Satterthwaite degrees of freedom. With few seeds the seed part has few degrees of freedom and the interval
    widens accordingly (t = 4.30 at 2 degrees of freedom): a percentile bootstrap over 3 seeds cannot reach past
    the seeds' range, and covered a 95% target only 87-92% of the time in simulations like tests/test_stats.py's.
    With S = 1 it is the usual t-interval over problems (seed variation is then unseen). All values equal: a
    zero-width interval.
    """
    x = _matrix(values)
    _check_level(level)
    var_seed, var_problem, df = variance_components(x)
    mean = float(x.mean())
    half = t_quantile((1 + level) / 2, df) * math.sqrt(var_seed + var_problem) if df < math.inf else 0.0
    return Interval(mean, mean - half, mean + half, x.shape[0], x.shape[1])


def _sign_flip_p(d: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, bool]:
    """Two-sided p of H0 "the per-problem differences ``d`` are symmetric about 0": the share of sign patterns
    whose |mean| is at least the observed |mean| (exact for N <= 16, else Monte Carlo with the +1 correction)."""
    n = d.size
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # 1e-12 for O(1) values, relative for large ones
    observed = abs(float(d.sum())) / n - tol
    if n <= EXACT_SIGN_FLIP_MAX_N:
        patterns = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1  # row k: the bits of k
        means = np.abs((1 - 2 * patterns) @ d) / n
        return float((means >= observed).mean()), True
    count = 0
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        signs = 1 - 2 * rng.integers(0, 2, size=(b, n))
        count += int((np.abs(signs @ d) / n >= observed).sum())
    return (1 + count) / (1 + resamples), False


def paired_difference(a, b, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Difference:
    """``mean(a - b)`` for two groups evaluated on the same problems with the same seeds, an interval and a p-value.

    ``a`` and ``b`` are [S, N] (or 1-D [N]) with row i of both from seed i and column j of both from problem j; the
    caller aligns them. The interval is ``group_interval(a - b)``: over seeds and problems, of the paired
    differences, so per-problem effects shared by a and b cancel. ``p_value`` is a paired sign-flip
    (randomisation) test, two-sided, of H0 "the per-problem differences, averaged over seeds, are symmetric about
    0": exact over all 2^N sign patterns for N <= 16, else Monte Carlo with ``resamples`` random patterns (seeded
    by ``seed``) and p = (1 + count) / (1 + resamples). It sees only problem-to-problem variation (the seeds are
    averaged first). If every difference is 0: p = 1, interval [0, 0].
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same [seeds, problems] shape, got {x.shape} and {y.shape}")
    _check(level, resamples)
    d = x - y
    s, n = d.shape
    if not d.any():
        return Difference(0.0, 0.0, 0.0, s, n, p_value=1.0, p_exact=n <= EXACT_SIGN_FLIP_MAX_N)
    g = group_interval(d, level)
    p, exact = _sign_flip_p(d.mean(0), int(resamples), np.random.default_rng(seed))
    return Difference(g.mean, g.low, g.high, s, n, p_value=p, p_exact=exact)


def verdict(diff: Difference, higher_is_better: bool, a_name: str, b_name: str) -> str:
    """"<a_name> better", "<b_name> better" or "no detectable difference" for ``diff = a - b``.

    The verdict reads the interval only, which includes seed variation: a side is better when the interval lies
    strictly on one side of 0 (a > b when ``low > 0``; which side wins then depends on ``higher_is_better``). An
    interval that touches or contains 0 is "no detectable difference". The sign-flip p-value, which sees only
    problem-to-problem variation, is meant to be shown beside the verdict, not to decide it.
    """
    if diff.low > 0:
        a_higher = True
    elif diff.high < 0:
        a_higher = False
    else:
        return "no detectable difference"
    return f"{a_name if a_higher == higher_is_better else b_name} better"


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
