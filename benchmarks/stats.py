"""Paired-by-seed statistics of the benchmarks: a difference with its t-interval and the design's power,
and the same difference relative to the baseline with Fieller's interval for a ratio of means. Plain
Python (the benchmarks need no SciPy)."""
import functools
import math
import statistics
from typing import NamedTuple, Sequence


@functools.lru_cache(maxsize=None)  # a table asks for the same few (p, df) hundreds of times; each costs ~0.1 s
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (Simpson integration of the
    density and bisection: the benchmark needs no SciPy)."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f't_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}')
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        density = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))
    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


class Paired(NamedTuple):
    """A paired-by-seed difference: mean, 95% CI, SD of the differences, seeds, and the smallest true
    effect the design detects with 80% power at α = 0.05 two-sided."""
    mean: float
    low: float
    high: float
    sd: float
    n: int
    detectable: float


def paired_difference(a: Sequence[float], b: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> Paired:
    """``a - b`` paired by position: t-based CI, and the detectable effect
    ``(t(1-α/2) + t(power)) · sd / √n`` (the usual normal-shift approximation of a paired t-test's power)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f'paired_difference needs two equally long lists of at least 2 values, got {len(a)}, {len(b)}')
    deltas = [x - y for x, y in zip(a, b)]
    n, mean, sd = len(deltas), statistics.mean(deltas), statistics.stdev(deltas)
    se = sd / math.sqrt(n)
    half = t_quantile(1 - alpha / 2, n - 1) * se
    detectable = (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * se
    return Paired(mean, mean - half, mean + half, sd, n, detectable)


class Relative(NamedTuple):
    """``mean(a) / mean(b) - 1`` with its 95% Fieller interval; ``low``/``high`` are ∓inf when the
    baseline's mean is not significantly away from zero (the ratio is then unbounded), and ``mean`` is NaN
    when the baseline's mean is exactly zero (no relative change is defined)."""
    mean: float
    low: float
    high: float


def relative_difference(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> Relative:
    """The paired difference relative to the baseline ``b``: ρ − 1 with ρ = mean(a) / mean(b), and Fieller's
    interval for ρ from the paired sample covariance: the ρ where |ā − ρ·b̄| ≤ t·√(Var(ā − ρ·b̄)), i.e. between
    the roots of (b̄² − t²v_bb)ρ² − 2(āb̄ − t²v_ab)ρ + (ā² − t²v_aa) = 0."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f'relative_difference needs two equally long lists of at least 2 values, got {len(a)}, {len(b)}')
    n = len(a)
    mean_a, mean_b = statistics.mean(a), statistics.mean(b)
    v_aa, v_bb = statistics.variance(a) / n, statistics.variance(b) / n
    v_ab = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b)) / (n - 1) / n
    t2 = t_quantile(1 - alpha / 2, n - 1) ** 2
    quad, half_lin, const = mean_b ** 2 - t2 * v_bb, mean_a * mean_b - t2 * v_ab, mean_a ** 2 - t2 * v_aa
    ratio = mean_a / mean_b if mean_b else math.nan
    discriminant = half_lin ** 2 - quad * const
    if quad <= 0 or discriminant < 0:
        return Relative(ratio - 1, -math.inf, math.inf)
    root = math.sqrt(discriminant)
    return Relative(ratio - 1, (half_lin - root) / quad - 1, (half_lin + root) / quad - 1)
