"""The statistics of the report (drpo.experiments.stats) against hand computations and printed t tables."""

from __future__ import annotations

import math

import pytest

from drpo.experiments.stats import (
    eval_standard_error,
    mean_interval,
    mean_std,
    paired_difference,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(("df", "t975"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571),
                                          (6, 2.447), (9, 2.262), (10, 2.228), (20, 2.086), (30, 2.042)])
def test_t_quantile_matches_the_printed_table(df, t975):
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=5e-4)


def test_t_cdf_by_hand():
    # df = 1 is the Cauchy distribution: P(T <= 1) = 1/2 + atan(1)/pi = 3/4
    assert t_cdf(1.0, 1) == pytest.approx(0.75)
    # df = 2 has P(T <= t) = 1/2 + t / (2 sqrt(t^2 + 2)): at t = 1, 1/2 + 1/(2 sqrt 3)
    assert t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)))
    assert t_cdf(0.0, 7) == 0.5 and t_cdf(-2.776, 4) == pytest.approx(0.025, abs=1e-4)
    assert t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)  # the 99% column
    with pytest.raises(ValueError, match="positive integer"):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="0.5 <= p < 1"):
        t_quantile(0.4, 3)


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
    assert d == {"mean": pytest.approx(0.4), "low": None, "high": None, "n": 1, "seeds": [0],
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
