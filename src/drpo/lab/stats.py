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
d_s are normal and is the standard choice for a handful of paired runs. Student's t comes from scipy.stats;
*better*/*worse* at level 95% is the same as the paired t test's two-sided p < 0.05 (scipy's
``ttest_rel``), and each difference carries that p.

Several methods against one baseline are several tests: with 5 of them, the chance that at least one
interval excludes 0 by luck alone is about 23% (independent tests), not 5%. :func:`holm` adjusts the
p-values of such a family (Holm's step-down procedure, which controls that chance at 5% without assuming
the tests independent); the verdict says which separations survive it.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

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


def paired_difference(values: dict[int, float], baseline: dict[int, float], level: float = LEVEL) -> dict:
    """X - B over the seeds both have: {'mean', 'low', 'high', 'p', 'n', 'seeds', 'verdict'}.

    ``values`` and ``baseline`` map seed -> number (e.g. final eval accuracy). verdict: 'better' (the interval
    lies above 0), 'worse' (below), 'not separable' (it contains 0, or fewer than 2 paired seeds: then low,
    high and p are None). p: the two-sided p-value of the paired t test.

    >>> d = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.4, 2: 0.5})  # d = 0.1, 0.2, 0.2
    >>> [round(d[key], 4) for key in ("mean", "low", "high", "p")], d["verdict"]
    ([0.1667, 0.0232, 0.3101, 0.0377], 'better')
    """
    seeds = sorted(s for s in set(values) & set(baseline) if values[s] is not None and baseline[s] is not None)
    diffs = [values[s] - baseline[s] for s in seeds]
    out = {"mean": statistics.fmean(diffs) if diffs else None, "low": None, "high": None, "p": None,
           "n": len(diffs), "seeds": seeds, "verdict": "not separable"}
    if len(diffs) < 2:
        return out
    n, se = len(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * se
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    if se > 0:
        out["p"] = float(2 * scipy_stats.t.sf(abs(out["mean"]) / se, n - 1))
    else:  # identical differences: a zero-width interval, certain unless it is 0
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    if out["low"] > 0:
        out["verdict"] = "better"
    elif out["high"] < 0:
        out["verdict"] = "worse"
    return out


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-adjusted p-values of a family of tests: name -> adjusted p (None stays None, outside the family).

    Sorted ascending, the k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j));
    an adjusted p below 0.05 keeps its separation with the chance of any false one in the family at most 5%.

    >>> holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})  # 3 * 0.01; 2 * 0.03; max(2 * 0.03, 1 * 0.04)
    {'a': 0.03, 'b': 0.06, 'c': 0.06, 'd': None}
    """
    family = sorted((p, name) for name, p in p_values.items() if p is not None)
    adjusted, running = {}, 0.0
    for rank, (p, name) in enumerate(family):
        running = max(running, min(1.0, (len(family) - rank) * p))
        adjusted[name] = running
    return {name: adjusted.get(name) for name in p_values}


def mean_interval(values: list[float | None], level: float = LEVEL) -> dict:
    """{'mean', 'low', 'high', 'n'}: the t interval of a mean over seeds (None bounds below 2 values).

    >>> mean_interval([0.2, 0.4])  # sd 0.1414, t_1 = 12.706: 0.3 -+ 12.706 * 0.1
    ... # doctest: +ELLIPSIS
    {'mean': 0.3..., 'low': -0.970..., 'high': 1.570..., 'n': 2}
    """
    values = [v for v in values if v is not None]
    out = {"mean": statistics.fmean(values) if values else None, "low": None, "high": None, "n": len(values)}
    if len(values) >= 2:
        half = (float(scipy_stats.t.ppf(0.5 + level / 2, len(values) - 1))
                * statistics.stdev(values) / math.sqrt(len(values)))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def eval_standard_error(accuracy: float, prompts: int) -> float:
    """Standard error of one greedy evaluation: sqrt(p (1 - p) / n), at most 0.5 / sqrt(n) (p = 0.5)."""
    return math.sqrt(accuracy * (1 - accuracy) / prompts)
