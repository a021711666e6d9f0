"""Small-sample statistics without scipy: mean, sample std, Student-t and Wilson intervals,
and paired log-ratios (for "method A's error is x times method B's")."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
         2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.960


def mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def std(xs: List[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_interval(xs: List[float]) -> Tuple[float, float]:
    """95% confidence interval of the mean (Student t; the point itself for n = 1)."""
    m = mean(xs)
    if len(xs) < 2:
        return m, m
    h = t975(len(xs) - 1) * std(xs) / math.sqrt(len(xs))
    return m - h, m + h


def wilson(k: int, n: int) -> Tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sensible at k = 0 or n)."""
    if n == 0:
        return math.nan, math.nan
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_ratio(a: List[float], b: List[float]) -> Optional[Tuple[float, float, float]]:
    """Geometric mean of a_i / b_i over paired runs, with the 95% t-interval of the mean log
    ratio mapped back: (ratio, low, high). None without at least two positive pairs."""
    logs = [math.log(x / y) for x, y in zip(a, b) if x > 0 and y > 0]
    if len(logs) < 2:
        return None
    lo, hi = t_interval(logs)
    return math.exp(mean(logs)), math.exp(lo), math.exp(hi)
