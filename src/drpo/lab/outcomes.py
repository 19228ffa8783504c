"""The three outcomes a sweep's verdict reads, fixed before any sweep is read:

1. **Primary: late accuracy**, the mean greedy eval accuracy over the evaluations in the last
   LATE_WINDOW = 20% of a run, i.e. at steps >= 0.8 x the run's last evaluated step. One evaluation is
   noisy (the curves of one run move by several points between evaluations); a mean over the end of the
   run is what the run *reached*, not where one evaluation happened to land. With `eval.every=20` over
   100 steps that is the evaluations at steps 80 and 100; with the late schedule `drpo train` and `drpo
   compare` use by default (`eval.late_every=10` over the last `eval.late_fraction=0.3` of the steps),
   steps 80, 90 and 100. Every verdict sentence, "better / worse / not separable" and each table's
   "- baseline" column compares this number, paired over seeds (drpo.lab.stats).
2. **Learning speed: area under the accuracy curve**, the trapezoid integral of eval accuracy over
   steps from the first evaluation (step 0) to the last, divided by that span: the run's time-averaged
   accuracy, in accuracy units (a run that sat at its start accuracy scores its start accuracy; one that
   jumped at once to 0.6 and stayed scores 0.6).
3. **Stability: collapse**, as drpo.lab.collapse defines it.

The final evaluation alone (the last step's accuracy) stays a column of every table, for comparison.
"""

from __future__ import annotations

import statistics

LATE_WINDOW = 0.2  # the primary outcome averages the evaluations in this last fraction of a run's steps
PRIMARY = "late"  # results.json key of the primary outcome, per run and per method


def late_accuracy(evals: list[tuple[int, float]]) -> float | None:
    """Mean eval accuracy at steps >= (1 - LATE_WINDOW) x the last evaluated step; ``evals`` = [(step, acc)].

    >>> round(late_accuracy([(0, 0.3), (20, 0.4), (40, 0.5), (60, 0.4), (80, 0.3), (100, 0.5)]), 6)  # 80, 100
    0.4
    """
    if not evals:
        return None
    last = max(step for step, _ in evals)
    return statistics.fmean(value for step, value in evals if step >= (1 - LATE_WINDOW) * last - 1e-9)


def accuracy_area(evals: list[tuple[int, float]]) -> float | None:
    """Trapezoid area under eval accuracy over steps, divided by the span of steps (one evaluation: itself).

    >>> round(accuracy_area([(0, 0.2), (50, 0.4), (100, 0.4)]), 6)  # (0.3 * 50 + 0.4 * 50) / 100
    0.35
    """
    evals = sorted(evals)
    if not evals:
        return None
    span = evals[-1][0] - evals[0][0]
    if span == 0:
        return evals[-1][1]
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(evals, evals[1:], strict=False))
    return area / span
