"""When is a run *collapsed*? A pure function of its metric records, so that a verdict can be checked.

Definition (parameters are the keyword defaults of :func:`detect_collapse`). A run has collapsed when
any of these holds; the reported step is the earliest one.

1. **Accuracy collapse.** From some evaluation on, every evaluation up to the last one lies below
   ``accuracy_fraction`` (1/2) of the running best eval accuracy reached before it, *and* at least
   ``min_drop`` (0.1) below that best, and that fall spans at least ``min_evals`` (2) evaluations. The run
   ends collapsed: a dip that recovers is not a collapse, a fall seen on the final evaluation alone is
   not one either (one low evaluation can be noise, two in a row at 0.1 below the best hardly), and a run
   that never learned anything (best 0) cannot collapse by this rule. The absolute drop keeps evaluation
   noise out: 0.1 is about 3.5 standard errors of a 256-prompt evaluation at accuracy 0.3 (6.5 of a
   1200-prompt one), and more than one prompt of a small one (0.0625 -> 0 on 16 prompts is not a collapse).
2. **Mismatch blow-up.** The mean abs(pi - mu) of the sampled tokens (``mismatch/abs_mean``), smoothed by
   a trailing median over ``window`` (5) steps, exceeds ``max(mismatch_factor * baseline,
   mismatch_floor)`` = max(10 x baseline, 0.01) from some step to the end of the run; the baseline is
   the median over the first ``window`` training steps. The factor makes the rule relative to each
   condition's own mismatch (bf16 starts higher than fp32); the floor keeps float noise (fp32: ~1e-8,
   so 10x is still nothing) from counting; the median ignores single-step spikes. A run with lag L
   samples from the initial weights while the trainer moves on, so its mismatch ramps up from 0 (step 1)
   to the steady lag mismatch over its first L steps: for L <= 2 the median of the first 5 steps is
   already the steady value; for L >= 3 it is a ramp value, about 2/L of the steady one if the ramp is
   linear, so a steady lag mismatch stays under the 10x threshold only for lags up to about 20.
3. **Non-finite.** A step logged a non-finite ``reward/mean`` or ``mismatch/abs_mean``, or the run
   stopped on repeated non-finite losses (``stopped`` given, from summary.json).

What it does not call a collapse: slow learning, a plateau, a noisy curve, or a mismatch that is
large from the start and stays flat (a condition, not a failure of the trust region).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

ACCURACY_FRACTION = 0.5
MIN_DROP = 0.1
MIN_EVALS = 2
MISMATCH_FACTOR = 10.0
MISMATCH_FLOOR = 0.01
WINDOW = 5


@dataclass(frozen=True)
class Collapse:
    collapsed: bool
    step: int | None  # first step of the collapse (None when stable)
    reason: str  # one sentence, for the report


def detect_collapse(records: list[dict], stopped: str | None = None, *, accuracy_fraction: float = ACCURACY_FRACTION,
                    min_drop: float = MIN_DROP, min_evals: int = MIN_EVALS, mismatch_factor: float = MISMATCH_FACTOR,
                    mismatch_floor: float = MISMATCH_FLOOR, window: int = WINDOW) -> Collapse:
    """The verdict on one run from its metrics.jsonl records (see the module docstring for the rules).

    >>> flat = [{"step": s, "eval/accuracy": 0.4} for s in range(0, 50, 10)]
    >>> detect_collapse(flat).collapsed
    False
    >>> falls = [{"step": s, "eval/accuracy": a} for s, a in [(0, .3), (10, .6), (20, .2), (30, .1)]]
    >>> detect_collapse(falls)
    Collapse(collapsed=True, step=20, reason='eval accuracy fell from its best 0.600 to 0.200 at step 20 and stayed below half of it over 2 evaluations (last 0.100)')
    >>> detect_collapse(falls[:3]).collapsed  # the final evaluation alone
    False
    """
    if min_evals < 1:
        raise ValueError(f"min_evals must be at least 1, got {min_evals}")
    found = [c for c in (_non_finite(records, stopped),
                         _accuracy_collapse(records, accuracy_fraction, min_drop, min_evals),
                         _mismatch_blow_up(records, mismatch_factor, mismatch_floor, window)) if c is not None]
    if not found:
        return Collapse(False, None, "stable" if records else "no metrics")
    first = min(found, key=lambda c: c.step)
    reasons = [first.reason] + [c.reason for c in found if c is not first]
    return Collapse(True, first.step, "; ".join(reasons))


def as_number(value) -> float | None:
    """A metrics.jsonl value as a float: non-finite values are logged as strings ('nan', 'inf')."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), v) for r in records if (v := as_number(r.get(key))) is not None]


def _non_finite(records: list[dict], stopped: str | None) -> Collapse | None:
    for key in ("reward/mean", "mismatch/abs_mean"):
        for step, value in _series(records, key):
            if not math.isfinite(value):
                return Collapse(True, step, f"non-finite {key} ({value}) at step {step}")
    if stopped:
        last = max((int(r["step"]) for r in records), default=0)
        return Collapse(True, last, f"stopped after step {last}: {stopped}")
    return None


def _accuracy_collapse(records: list[dict], fraction: float, min_drop: float, min_evals: int) -> Collapse | None:
    evals = _series(records, "eval/accuracy")
    best = -math.inf
    bests = []  # running best *before* each evaluation
    for _, accuracy in evals:
        bests.append(best)
        best = max(best, accuracy)
    start = None  # index of the first evaluation of a fall that lasts to the end
    for i, ((_, accuracy), before) in enumerate(zip(evals, bests, strict=True)):
        low = before > -math.inf and accuracy < fraction * before and before - accuracy >= min_drop
        start = (i if start is None else start) if low else None
    if start is None or len(evals) - start < min_evals:
        return None
    step, accuracy = evals[start]
    return Collapse(True, step, f"eval accuracy fell from its best {bests[start]:.3f} to {accuracy:.3f} at step "
                                f"{step} and stayed below half of it over {len(evals) - start} evaluations "
                                f"(last {evals[-1][1]:.3f})")


def _mismatch_blow_up(records: list[dict], factor: float, floor: float, window: int) -> Collapse | None:
    points = [(s, v) for s, v in _series(records, "mismatch/abs_mean") if math.isfinite(v)]
    if not points:
        return None
    baseline = statistics.median(v for _, v in points[:window])
    threshold = max(factor * baseline, floor)
    smoothed = [statistics.median(v for _, v in points[max(0, i + 1 - window): i + 1]) for i in range(len(points))]
    start = None
    for i, value in enumerate(smoothed):
        start = (i if start is None else start) if value > threshold else None
    if start is None:
        return None
    step = points[start][0]
    return Collapse(True, step, f"mean |pi-mu| grew from {baseline:.2e} to {smoothed[start]:.2e} (> {threshold:.2e} "
                                f"= max({factor:g} x start, {floor:g})) at step {step} and stayed there "
                                f"(peak {max(v for _, v in points):.2e})")
