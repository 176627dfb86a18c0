"""Is a difference between two configurations bigger than seed noise? A paired t-test.

Runs of a sweep that share `train.seed` share their initial-weight RNG and their batch
order, so the seed's effect is common to both sides of a comparison: the per-seed
differences carry the energy's effect and what is left of the noise. With few seeds a
paired test on those differences is the honest choice (a Welch test would count the
shared seed effect as noise twice); with 3 seeds it has 2 degrees of freedom and only
large, consistent differences pass.

    paired_t([2.41, 2.43, 2.40], [2.45, 2.46, 2.44])  -> {"diff": -0.037, "t": ..., "p": ...}
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def student_t_sf2(t: float, df: int) -> float:
    """Two-sided p-value P(|T| >= |t|) of Student's t with `df` degrees of freedom
    (the density integrated numerically: no SciPy needed)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    t = abs(t)
    if math.isinf(t):
        return 0.0
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))
    # P(|T| < t) = 2 ∫_0^t density, by Simpson's rule on an even number of panels; the
    # substitution x = tan(u) keeps the integrand smooth for large t.
    top, n = math.atan(t), 2000
    h = top / n
    total = 0.0
    for i in range(n + 1):
        u = i * h
        w = 1 if i in (0, n) else (4 if i % 2 else 2)
        total += w * density(math.tan(u)) / math.cos(u) ** 2
    inside = 2 * total * h / 3
    return min(1.0, max(0.0, 1.0 - inside))


def paired_t(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of a - b over pairs, its sample std, t, two-sided p (df = pairs - 1). p is None
    with fewer than 2 pairs; with identical differences (std 0) p is 0 unless the mean is 0."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        raise ValueError("no pairs")
    mean = statistics.fmean(d)
    if n < 2:
        return {"pairs": n, "diff": mean, "std": None, "t": None, "p": None}
    sd = statistics.stdev(d)
    if sd == 0:
        return {"pairs": n, "diff": mean, "std": 0.0, "t": math.inf if mean else 0.0,
                "p": 0.0 if mean else 1.0}
    t = mean / (sd / math.sqrt(n))
    return {"pairs": n, "diff": mean, "std": sd, "t": t, "p": student_t_sf2(t, n - 1)}
