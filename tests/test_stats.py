"""The statistics of the report (drpo.lab.stats) against hand computations and printed t tables."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drpo.lab.stats import (
    eval_standard_error,
    holm,
    mean_interval,
    mean_std,
    paired_difference,
)


@pytest.mark.parametrize(("n", "t975"), [(2, 12.706), (3, 4.303), (4, 3.182), (5, 2.776), (6, 2.571),
                                         (7, 2.447), (10, 2.262), (11, 2.228), (21, 2.086), (31, 2.042)])
def test_interval_half_width_uses_the_printed_t_table(n, t975):
    """n differences alternating 0 and 1 (sd known in closed form): half-width = t_{n-1, 0.975} sd / sqrt(n)."""
    diffs = [float(i % 2) for i in range(n)]
    sd = math.sqrt(sum((d - sum(diffs) / n) ** 2 for d in diffs) / (n - 1))
    d = paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(n), 0.0))
    assert (d["high"] - d["low"]) / 2 == pytest.approx(t975 * sd / math.sqrt(n), rel=2e-4)
    m = mean_interval(diffs, level=0.99)
    assert m["high"] > d["high"]  # a 99% interval is wider than the 95% one


def test_p_value_by_hand():
    """d = 0.1, 0.2, 0.2: t = mean / (sd / sqrt 3) = 5 on 2 df, whose CDF is 1/2 + t / (2 sqrt(t^2 + 2)):
    p = 2 (1/2 - 5 / (2 sqrt 27)) = 1 - 5 / sqrt(27)."""
    d = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.4, 2: 0.5})
    assert d["p"] == pytest.approx(1 - 5 / math.sqrt(27), rel=1e-9)
    assert paired_difference({0: 0.6}, {0: 0.2})["p"] is None


@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=8))
def test_separation_is_the_same_as_p_below_five_percent(diffs):
    """The interval excludes 0 exactly when the paired t test's two-sided p < 0.05 (one test, two readings)."""
    d = paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))
    if d["p"] is not None and abs(d["p"] - 0.05) > 1e-9:
        assert (d["verdict"] != "not separable") == (d["p"] < 0.05)


def test_holm_by_hand():
    """m = 4: 0.01 * 4 = 0.04; 0.02 * 3 = 0.06; 0.03 * 2 = 0.06; 0.5 * 1 = 0.5 (never below the one before)."""
    assert holm({"a": 0.03, "b": 0.01, "c": 0.5, "d": 0.02, "e": None}) == {
        "a": pytest.approx(0.06), "b": pytest.approx(0.04), "c": pytest.approx(0.5), "d": pytest.approx(0.06),
        "e": None}
    assert holm({"a": 0.4, "b": 0.9}) == {"a": pytest.approx(0.8), "b": pytest.approx(0.9)}  # capped at 1 x 0.9
    assert holm({"a": 0.7, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # 2 x 0.6 capped at 1, then max
    assert holm({}) == {} and holm({"a": 0.2}) == {"a": 0.2}


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.floats(0, 1), min_size=1, max_size=8))
def test_holm_properties(p_values):
    """Adjusted p: at least the raw p, at most 1, at most the Bonferroni m x p, and in the raw p's order."""
    adjusted, m = holm(p_values), len(p_values)
    for name, p in p_values.items():
        assert p <= adjusted[name] <= min(1.0, m * p) + 1e-12
    for a in p_values:
        for b in p_values:
            if p_values[a] < p_values[b]:
                assert adjusted[a] <= adjusted[b]


def test_paired_difference_separable():
    """d = 0.10, 0.12, 0.11: mean 0.11, sd 0.01, half-width 4.303 * 0.01 / sqrt(3) = 0.02484."""
    d = paired_difference({0: 0.50, 1: 0.42, 2: 0.61}, {0: 0.40, 1: 0.30, 2: 0.50})
    assert d["mean"] == pytest.approx(0.11) and d["n"] == 3 and d["seeds"] == [0, 1, 2]
    assert d["low"] == pytest.approx(0.11 - 0.024843, abs=1e-5)
    assert d["high"] == pytest.approx(0.11 + 0.024843, abs=1e-5)
    assert d["verdict"] == "better"
    flipped = paired_difference({0: 0.40, 1: 0.30, 2: 0.50}, {0: 0.50, 1: 0.42, 2: 0.61})
    assert flipped["verdict"] == "worse" and flipped["high"] == pytest.approx(-d["low"])


def test_paired_difference_not_separable():
    """d = 0.10, -0.05, 0.02: mean 0.02333, sd 0.07506, half-width 4.303 * 0.07506 / sqrt(3) = 0.18648."""
    d = paired_difference({0: 0.5, 1: 0.35, 2: 0.52}, {0: 0.4, 1: 0.4, 2: 0.5})
    assert d["mean"] == pytest.approx(0.023333, abs=1e-6)
    assert (d["low"], d["high"]) == (pytest.approx(0.023333 - 0.18648, abs=1e-4),
                                     pytest.approx(0.023333 + 0.18648, abs=1e-4))
    assert d["verdict"] == "not separable"


def test_pairing_is_by_seed_not_by_position():
    """Seeds both finished only; a large gap between seeds cancels in the pairing (what the seed decides)."""
    d = paired_difference({0: 0.9, 1: 0.3, 3: 0.1}, {1: 0.2, 0: 0.8, 2: 0.5})
    assert d["seeds"] == [0, 1] and d["mean"] == pytest.approx(0.1)
    # identical differences: zero width, separable (t interval of a constant)
    assert (d["low"], d["high"], d["verdict"]) == (pytest.approx(0.1), pytest.approx(0.1), "better")


def test_one_paired_seed_has_no_interval():
    d = paired_difference({0: 0.6, 1: 0.7}, {0: 0.2})
    assert d == {"mean": pytest.approx(0.4), "low": None, "high": None, "p": None, "n": 1, "seeds": [0],
                 "verdict": "not separable"}
    assert paired_difference({}, {0: 0.2})["mean"] is None


def test_mean_interval_and_eval_standard_error():
    # 0.2, 0.4, 0.6: mean 0.4, sd 0.2, half-width 4.303 * 0.2 / sqrt(3) = 0.49687
    m = mean_interval([0.2, 0.4, 0.6, None])
    assert m["n"] == 3 and m["low"] == pytest.approx(0.4 - 0.49687, abs=1e-4)
    assert mean_interval([0.3])["low"] is None
    assert eval_standard_error(0.5, 1200) == pytest.approx(0.0144, abs=1e-4)  # the sweep's eval size
    assert eval_standard_error(0.5, 256) == pytest.approx(0.03125)


def test_mean_std_leaves_out_missing_and_non_finite_values():
    assert mean_std([0.2, None, float("nan"), 0.4]) == {"mean": pytest.approx(0.3), "std": pytest.approx(0.1414, abs=1e-4),
                                                      "n": 2}
    assert mean_std([float("inf")]) == {"mean": None, "std": None, "n": 0}


def test_the_docstring_examples_hold():
    """The worked examples in stats.py's docstrings are checked, not only read."""
    import doctest

    from drpo.lab import stats

    assert doctest.testmod(stats).failed == 0
