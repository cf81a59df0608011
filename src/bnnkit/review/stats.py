"""The review's statistics, torch- and SciPy-free: Student's t, paired comparisons, Holm's
correction, the minimum detectable effect, Spearman's rank correlation.

Student's t distribution is computed, not looked up: its CDF from the regularized
incomplete beta function, ``P(|T| > t) = I_x(df/2, 1/2)`` with ``x = df / (df + t²)``,
evaluated by the continued fraction of Numerical Recipes (3rd ed., §6.4) with the modified
Lentz method to a relative error of 1e-14; its quantile by bisection on that CDF to 1e-12.
tests/test_review_stats.py checks both against the closed forms for 1, 2 and 4 degrees of
freedom and against printed t tables.

A method and the baseline are paired by seed: with the same seed they see the same batches
in the same order (``training.batching``) and, where their layers have the same shapes,
start from the same weights. Their per-seed differences are therefore analysed as one
sample (a paired t test), which removes the seed-to-seed variation they share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # two-sided: 95% confidence intervals
POWER = 0.80  # of the minimum detectable effect


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-14
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a+1)/(a+b+2); beyond, use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    half = 0.5 * t_sf2(t, df)
    return 1.0 - half if t >= 0 else half


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * max(1.0, high):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Paired:
    """A paired comparison of a method with the baseline over ``n`` shared seeds."""

    n: int
    delta: float  # mean of the per-seed differences (method - baseline)
    sd: float | None  # sample standard deviation of the differences (ddof=1)
    ci_low: float | None  # 95% t interval of the mean difference
    ci_high: float | None
    p: float | None  # two-sided paired t test of "no difference"
    mde: float | None  # the smallest true difference found with POWER at ALPHA for these n and sd


def paired(method: Sequence[float], baseline: Sequence[float]) -> Paired:
    """Paired t statistics of ``method[i] - baseline[i]``. With one pair there is no spread:
    only the difference. Identical differences (sd 0) give a zero-width interval and p = 0
    unless the mean difference is 0 too (p = 1)."""
    if len(method) != len(baseline):
        raise ValueError(f"paired samples differ in length: {len(method)} vs {len(baseline)}")
    d = np.asarray(method, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no pairs")
    mean = float(d.mean())
    if n == 1:
        return Paired(1, mean, None, None, None, None, None)
    sd = float(d.std(ddof=1))
    df = n - 1
    half = t_quantile(1 - ALPHA / 2, df) * sd / math.sqrt(n)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = t_sf2(mean / (sd / math.sqrt(n)), df)
    return Paired(n, mean, sd, mean - half, mean + half, p, mde(sd, n))


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided paired t test on ``n`` pairs whose
    differences have standard deviation ``sd``: ``(t_{1-α/2} + t_{power}) · sd / √n``
    with ``n - 1`` degrees of freedom (the usual approximation to the noncentral t)."""
    df = n - 1
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * sd / math.sqrt(n)


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the half-width of its 95% t interval (None for fewer than 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), t_quantile(1 - ALPHA / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (family-wise error), in the given order:
    the i-th smallest of m is multiplied by m - i + 1, then made monotone and capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    result = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        result[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); None for fewer
    than 3 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError(f"spearman: lengths differ: {len(a)} vs {len(b)}")
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return None if denominator == 0 else float((ra * rb).sum() / denominator)
