"""Uncertainty for comparing training runs: bootstrap intervals over seeds and problems, paired differences with a
sign-flip p-value, a verdict string, and the smoothing and seed bands of training curves.

Every run of a comparison evaluated the same N held-out problems, so a group of replicate runs (same configuration,
different seeds) gives a matrix ``values[S, N]``: one row per seed, one column per problem, each entry a per-problem
metric (mean correctness over the problem's sampled completions, satisfaction, divergence ...). Both seeds and
problems are samples from larger populations, so the intervals here resample both (a two-way, crossed bootstrap).

Pure numpy, vectorised, and deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_SIGN_FLIP_MAX_N = 16  # up to this many problems the sign-flip test enumerates all 2^N sign patterns
_CHUNK_ELEMENTS = 1 << 22  # resamples are drawn in chunks of about this many index draws (bounds memory)


@dataclass(frozen=True)
class Interval:
    """A point estimate and a two-sided percentile-bootstrap interval ``[low, high]`` around it."""

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
    """``mean(a - b)`` with its paired two-way bootstrap interval and a paired sign-flip ``p_value`` (two-sided);
    ``p_exact`` says whether the p-value enumerated every sign pattern (N <= 16) or is a Monte Carlo estimate."""

    p_value: float
    p_exact: bool


def _matrix(values, name: str = "values") -> np.ndarray:
    """``values`` as a float64 [S, N] matrix (a 1-D array is one seed), rejecting empty and non-finite input."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 1-D [N] or 2-D [seeds, problems] array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); need at least one seed and one problem")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf at {np.argwhere(~np.isfinite(x))[0].tolist()}")
    return x


def _check(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples}")


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators from one seed: the bootstrap's and the sign-flip test's, so that the paired
    interval of ``a - b`` is exactly ``group_interval(a - b)`` for the same seed."""
    boot, flips = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(flips)


def _counts(rng: np.random.Generator, b: int, k: int) -> np.ndarray:
    """[b, k] float: for each of b resamples, how often each of k indices was drawn in k draws with replacement."""
    idx = rng.integers(0, k, size=(b, k)) + k * np.arange(b)[:, None]
    return np.bincount(idx.ravel(), minlength=b * k).reshape(b, k).astype(np.float64)


def _two_way_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    s, n = x.shape
    out = np.empty(resamples)
    chunk = max(1, _CHUNK_ELEMENTS // (s + n))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        rows = _counts(rng, b, s)  # mean of x[r][:, c] = rows_count @ x @ cols_count / (S N)
        cols = _counts(rng, b, n)
        out[start:start + b] = ((rows @ x) * cols).sum(1) / (s * n)
    return out


def bootstrap_means(values, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """The ``resamples`` bootstrap replicates of the grand mean that ``group_interval`` takes quantiles of.

    Each replicate draws S seed rows with replacement and, independently, N problem columns with replacement, and
    is the mean of the sub-matrix ``values[rows][:, cols]``. With S = 1 this is a bootstrap over problems.
    """
    x = _matrix(values)
    _check(0.5, resamples)
    return _two_way_means(x, int(resamples), _streams(seed)[0])


def group_interval(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """The grand mean of ``values[S, N]`` (S seeds x N problems; a 1-D array is S = 1) and its interval.

    The interval is a two-sided percentile bootstrap at ``level`` over seeds AND problems (crossed bootstrap): each
    of ``resamples`` replicates draws S seed rows with replacement and, independently, N problem columns with
    replacement, and takes the mean of ``values[rows][:, cols]``; ``low`` and ``high`` are the (1 - level) / 2 and
    (1 + level) / 2 quantiles of the replicates. It covers the variation from both the choice of problems and the
    choice of training seed; with S = 1 it reduces to a bootstrap over problems (seed variation is then unseen).
    """
    x = _matrix(values)
    _check(level, resamples)
    means = _two_way_means(x, int(resamples), _streams(seed)[0])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean()), float(low), float(high), x.shape[0], x.shape[1])


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
    caller aligns them. The interval is ``group_interval(a - b)``: the two-way percentile bootstrap over seeds and
    problems, applied to the paired differences (the same resampled rows and columns for a and b), so per-problem
    effects shared by a and b cancel. ``p_value`` is a paired sign-flip (randomisation) test, two-sided, of H0 "the
    per-problem differences, averaged over seeds, are symmetric about 0": exact over all 2^N sign patterns for
    N <= 16, else Monte Carlo with ``resamples`` random patterns and p = (1 + count) / (1 + resamples). It sees only
    problem-to-problem variation (the seeds are averaged first). If every difference is 0: p = 1, interval [0, 0].
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same [seeds, problems] shape, got {x.shape} and {y.shape}")
    _check(level, resamples)
    d = x - y
    s, n = d.shape
    if not d.any():
        return Difference(0.0, 0.0, 0.0, s, n, p_value=1.0, p_exact=n <= EXACT_SIGN_FLIP_MAX_N)
    boot_rng, flip_rng = _streams(seed)
    means = _two_way_means(d, int(resamples), boot_rng)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    p, exact = _sign_flip_p(d.mean(0), int(resamples), flip_rng)
    return Difference(float(d.mean()), float(low), float(high), s, n, p_value=p, p_exact=exact)


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
    x = np.asarray(y, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D curve, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf at index {int(np.argmax(~np.isfinite(x)))}")
    return x


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
