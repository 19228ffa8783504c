"""The collapse definition (drpo.lab.collapse) on synthetic curves: each rule fires when it should
and only then."""

from __future__ import annotations

import pytest

from drpo.lab.collapse import detect_collapse


def evals(*points):
    """(step, accuracy) pairs -> eval records."""
    return [{"step": s, "eval/accuracy": a} for s, a in points]


def mismatch(values, start=1):
    """mean abs(pi - mu) per training step -> step records."""
    return [{"step": start + i, "mismatch/abs_mean": v, "reward/mean": 0.5} for i, v in enumerate(values)]


def merged(*lists):
    by_step = {}
    for records in lists:
        for r in records:
            by_step.setdefault(r["step"], {}).update(r)
    return [by_step[s] for s in sorted(by_step)]


def test_stable_run_is_not_collapsed():
    records = merged(evals((0, 0.3), (10, 0.45), (20, 0.5), (30, 0.52)), mismatch([1e-3] * 30))
    verdict = detect_collapse(records)
    assert not verdict.collapsed and verdict.step is None and verdict.reason == "stable"


def test_no_records():
    assert detect_collapse([]) == detect_collapse([]).__class__(False, None, "no metrics")


def test_accuracy_falls_below_half_of_its_best_and_stays():
    verdict = detect_collapse(evals((0, 0.3), (10, 0.6), (20, 0.5), (30, 0.25), (40, 0.1), (50, 0.2)))
    assert verdict.collapsed and verdict.step == 30
    assert "0.600" in verdict.reason and "0.250" in verdict.reason


def test_a_dip_that_recovers_is_not_a_collapse():
    assert not detect_collapse(evals((0, 0.3), (10, 0.6), (20, 0.2), (30, 0.55))).collapsed
    # recovering to just above half of the best is enough
    assert not detect_collapse(evals((0, 0.3), (10, 0.6), (20, 0.1), (30, 0.31))).collapsed


def test_the_fall_that_counts_is_the_last_one():
    verdict = detect_collapse(evals((0, 0.4), (10, 0.8), (20, 0.2), (30, 0.7), (40, 0.3), (50, 0.1)))
    assert verdict.collapsed and verdict.step == 40


def test_a_fall_must_hold_over_the_last_two_evaluations():
    # the final evaluation alone is not enough, however far it falls
    assert not detect_collapse(evals((0, 0.3), (10, 0.6), (20, 0.6), (30, 0.1))).collapsed
    verdict = detect_collapse(evals((0, 0.3), (10, 0.6), (20, 0.6), (30, 0.1), (40, 0.2)))
    assert verdict.collapsed and verdict.step == 30 and "over 2 evaluations" in verdict.reason
    # a fall, a recovery, then one low final evaluation: not collapsed
    assert not detect_collapse(evals((0, 0.3), (10, 0.6), (20, 0.1), (30, 0.5), (40, 0.1))).collapsed


def test_the_window_is_a_parameter():
    curve = evals((0, 0.3), (10, 0.6), (20, 0.2), (30, 0.1))
    assert detect_collapse(curve, min_evals=2).collapsed
    assert not detect_collapse(curve, min_evals=3).collapsed
    assert detect_collapse(curve[:3], min_evals=1).collapsed
    with pytest.raises(ValueError, match="min_evals must be at least 1"):
        detect_collapse(curve, min_evals=0)


@pytest.mark.parametrize("points", [
    [(0, 0.06), (10, 0.07), (20, 0.03)],  # below half, but only 0.04 absolute: noise at this level
    [(0, 0.0625), (10, 0.0)],  # one prompt of a 16-prompt evaluation
    [(0, 0.0), (10, 0.0), (20, 0.0)],  # never learned: not a collapse
    [(0, 0.5), (10, 0.26), (20, 0.26)],  # just above half
])
def test_small_or_absent_falls_are_not_collapses(points):
    assert not detect_collapse(evals(*points)).collapsed


def test_fraction_and_min_drop_are_parameters():
    curve = evals((0, 0.5), (10, 0.3), (20, 0.3))
    assert not detect_collapse(curve).collapsed
    assert detect_collapse(curve, accuracy_fraction=0.7).collapsed
    assert detect_collapse(evals((0, 0.08), (10, 0.03), (20, 0.03)), min_drop=0.05).collapsed
    assert not detect_collapse(evals((0, 0.08), (10, 0.03), (20, 0.03)), min_drop=0.06).collapsed


def test_mismatch_blow_up():
    values = [1e-3] * 10 + [2e-3, 5e-3, 2e-2, 5e-2, 8e-2, 1e-1, 1e-1, 1.2e-1, 1.5e-1, 2e-1]
    verdict = detect_collapse(mismatch(values))
    assert verdict.collapsed
    # trailing median over 5 steps first exceeds max(10 x 1e-3, 0.01) = 0.01 once 3 of the last 5 do
    assert verdict.step == 15
    assert "mean |pi-mu|" in verdict.reason


def test_mismatch_growth_below_the_floor_is_float_noise():
    # fp32: 1e-8 growing 100x is still nothing
    assert not detect_collapse(mismatch([1e-8] * 5 + [1e-6] * 20)).collapsed


def test_mismatch_spikes_are_smoothed_out():
    values = [2e-3] * 30
    values[10] = values[20] = values[29] = 0.5
    assert not detect_collapse(mismatch(values)).collapsed


def test_mismatch_that_grows_then_comes_back_is_not_a_collapse():
    values = [1e-3] * 5 + [5e-2] * 10 + [1e-3] * 10
    assert not detect_collapse(mismatch(values)).collapsed


def test_mismatch_large_from_the_start_is_a_condition_not_a_collapse():
    # e.g. a lagged run: the first steps share weights (mismatch 0), then a steady lag mismatch
    values = [0.0, 0.0] + [4e-2] * 30
    assert not detect_collapse(mismatch(values)).collapsed


def test_non_finite_values_collapse_at_their_step():
    records = mismatch([1e-3] * 6)
    records[3]["mismatch/abs_mean"] = "nan"  # how MetricsLogger writes a non-finite value
    verdict = detect_collapse(records)
    assert verdict.collapsed and verdict.step == 4 and "non-finite mismatch/abs_mean" in verdict.reason
    records = mismatch([1e-3] * 6)
    records[5]["reward/mean"] = float("inf")
    assert detect_collapse(records).step == 6


def test_a_run_stopped_on_non_finite_losses_is_collapsed():
    verdict = detect_collapse(mismatch([1e-3] * 7), stopped="non-finite loss: 3 updates in a row")
    assert verdict.collapsed and verdict.step == 7 and "stopped after step 7" in verdict.reason


def test_earliest_rule_gives_the_step_and_all_reasons_are_kept():
    records = merged(evals((0, 0.3), (10, 0.6), (15, 0.1), (20, 0.1)), mismatch([1e-3] * 5 + [0.1] * 15))
    verdict = detect_collapse(records)
    assert verdict.collapsed and verdict.step == 8  # the mismatch rule fires before the accuracy rule (15)
    assert "mean |pi-mu|" in verdict.reason and "eval accuracy" in verdict.reason


@pytest.mark.parametrize(("lag", "collapsed"), [(1, False), (3, False), (4, False), (8, False), (16, False),
                                                (30, True)])
def test_a_lagged_runs_ramp_as_the_docstring_says(lag, collapsed):
    """Mismatch ramping linearly from 0 (step 1) to a steady 0.04 over the first `lag` steps, then flat.

    The baseline (median of the first 5 steps) is 2/lag of the steady value for lag >= 3, so the steady lag
    mismatch stays under 10x baseline up to lag ~20 and is called a blow-up beyond.
    """
    values = [0.04 * min(step, lag) / lag for step in range(lag + 30)]
    assert detect_collapse(mismatch(values)).collapsed is collapsed
