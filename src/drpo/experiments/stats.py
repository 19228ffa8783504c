"""The statistics of a sweep's verdict: paired differences over seeds, with Student t intervals.

Every comparison in the report is *paired*: method X against a named baseline B on the same seeds, where a
seed fixes the base model, the prompts and the sampling seeds, so the per-seed difference X_s - B_s removes
what the seed alone decides (how good its base model is). Over the n seeds both finished:

    d_s = X_s - B_s,   mean d,   sd = sample standard deviation of d,
    interval = mean d -+ t_{n-1} * sd / sqrt(n)      (two-sided, LEVEL = 95%, t: Student's quantile)

X is *better* when the interval lies above 0, *worse* when below, *not separable* otherwise; with one paired
seed there is no interval and nothing separates. No fixed threshold enters: a gap is judged against the
seed-to-seed spread of the differences themselves.

Why t and not a bootstrap: with 3-5 seeds a percentile bootstrap resamples at most 5 values and its
interval is too narrow (it cannot be wider than the range of the d_s); the t interval is exact when the
d_s are normal and is the standard choice for a handful of paired runs.

Student's t distribution is computed here (no scipy): for an integer number of degrees of freedom its CDF
has a closed form (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
import statistics

LEVEL = 0.95  # two-sided confidence level of every interval in the report


def mean_std(values: list[float | None]) -> dict:
    """{'mean', 'std', 'n'}: sample standard deviation (0 for one value); None mean when empty.

    Non-finite values (a run whose metrics blew up) are left out: the collapse column reports those runs.
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer ``df`` >= 1 degrees of freedom.

    A(t) = P(|T| <= t) from theta = atan(t / sqrt(df)) (A&S 26.7.3 odd df, 26.7.4 even df):
    odd:  A = 2/pi * (theta + sin(theta) cos(theta) * (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ... up to cos^(df-3)))
    even: A = sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))

    >>> round(t_cdf(12.706, 1), 4), round(t_cdf(4.303, 2), 4)
    (0.975, 0.975)
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        series, term = 0.0, 1.0  # term k: prod_{j<=k} 2j / (2j+1) * cos^(2k)
        if df > 1:
            series = 1.0
            for k in range(1, (df - 1) // 2):
                term *= 2 * k / (2 * k + 1) * cos2
                series += term
        a = 2 / math.pi * (theta + sin * math.cos(theta) * series)
    else:
        series, term = 1.0, 1.0  # term k: prod_{j<=k} (2j-1) / 2j * cos^(2k)
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            series += term
        a = sin * series
    return 0.5 + math.copysign(a / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, for 0.5 <= p < 1 (bisection on :func:`t_cdf`, to 1e-10).

    >>> round(t_quantile(0.975, 4), 3), round(t_quantile(0.975, 30), 3)
    (2.776, 2.042)
    """
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile takes 0.5 <= p < 1, got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    while high - low > 1e-10:
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def paired_difference(values: dict[int, float], baseline: dict[int, float], level: float = LEVEL) -> dict:
    """X - B over the seeds both have: {'mean', 'low', 'high', 'n', 'seeds', 'verdict'}.

    ``values`` and ``baseline`` map seed -> number (e.g. final eval accuracy). verdict: 'better' (the interval
    lies above 0), 'worse' (below), 'not separable' (it contains 0, or fewer than 2 paired seeds: then low and
    high are None).

    >>> paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.4, 2: 0.5})  # d = 0.1, 0.2, 0.2
    ... # doctest: +ELLIPSIS
    {'mean': 0.166..., 'low': 0.023..., 'high': 0.310..., 'n': 3, 'seeds': [0, 1, 2], 'verdict': 'better'}
    """
    seeds = sorted(s for s in set(values) & set(baseline) if values[s] is not None and baseline[s] is not None)
    diffs = [values[s] - baseline[s] for s in seeds]
    out = {"mean": statistics.fmean(diffs) if diffs else None, "low": None, "high": None, "n": len(diffs),
           "seeds": seeds, "verdict": "not separable"}
    if len(diffs) < 2:
        return out
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    if out["low"] > 0:
        out["verdict"] = "better"
    elif out["high"] < 0:
        out["verdict"] = "worse"
    return out


def mean_interval(values: list[float | None], level: float = LEVEL) -> dict:
    """{'mean', 'low', 'high', 'n'}: the t interval of a mean over seeds (None bounds below 2 values).

    >>> mean_interval([0.2, 0.4])  # sd 0.1414, t_1 = 12.706: 0.3 -+ 12.706 * 0.1
    ... # doctest: +ELLIPSIS
    {'mean': 0.3..., 'low': -0.970..., 'high': 1.570..., 'n': 2}
    """
    values = [v for v in values if v is not None]
    out = {"mean": statistics.fmean(values) if values else None, "low": None, "high": None, "n": len(values)}
    if len(values) >= 2:
        half = t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def eval_standard_error(accuracy: float, prompts: int) -> float:
    """Standard error of one greedy evaluation: sqrt(p (1 - p) / n), at most 0.5 / sqrt(n) (p = 0.5)."""
    return math.sqrt(accuracy * (1 - accuracy) / prompts)
