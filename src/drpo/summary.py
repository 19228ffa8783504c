"""summary.json and plots at the end of a run: start, final and best eval accuracy, steps, wall time, peak memory."""

from __future__ import annotations

import json
import math
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from drpo.metrics import read_metrics
from drpo.plots import plot_run


@dataclass(frozen=True)
class RunTimes:
    """Where a run's time went, in seconds of wall-clock time."""

    rl_s: float  # evaluations and RL steps, over every process of the run (a resumed run adds its earlier ones)
    setup_s: float  # this process, before RL: the base model (warm-up, or the cache) and the behavior engine
    process_s: float  # this process in all: its setup and its share of rl_s


def write_summary(run_dir: str | Path, *, loss, steps: int, steps_planned: int, start_accuracy: float | None,
                  best_accuracy: float | None, times: RunTimes, base_model: dict | None, interrupted: bool = False,
                  stopped: str | None = None) -> dict:
    """OUT/summary.json of a run that ended: finished, ``interrupted`` (Ctrl-C, SIGTERM) or ``stopped`` (why the
    trainer gave up, e.g. on non-finite losses: finished, a rerun would repeat it); plots unless stopped.

    ``start_accuracy`` and ``best_accuracy`` come from the trainer, which carries them through checkpoints, not
    from the file, which holds only what was logged into this directory. ``loss``: the drpo.losses object the
    run trained with."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    evals = [r for r in records if "eval/accuracy" in r]
    summary = {
        "loss": loss.name,
        "loss_hyper": loss.hyper.model_dump(),
        "steps": steps,
        "steps_planned": steps_planned,
        "interrupted": interrupted,
        **({"stopped": stopped} if stopped is not None else {}),
        "eval/accuracy_start": start_accuracy,
        "eval/accuracy_final": evals[-1]["eval/accuracy"] if evals else None,
        "eval/accuracy_best": best_accuracy,
        "eval/sampled_accuracy_final": evals[-1].get("eval/sampled_accuracy") if evals else None,
        "reward/mean_first": next((r["reward/mean"] for r in records if "reward/mean" in r), None),
        "reward/mean_last": next((r["reward/mean"] for r in reversed(records) if "reward/mean" in r), None),
        # a non-finite value is logged as a string ("nan"): no peak of its own
        "mismatch/abs_mean_peak": max((r["mismatch/abs_mean"] for r in records
                                       if isinstance(r.get("mismatch/abs_mean"), (int, float))), default=None),
        "wall_time_s": round(times.rl_s, 1),  # RL only: setup_time_s and base_model.warmup_s are apart
        "setup_time_s": round(times.setup_s, 1),
        "process_time_s": round(times.process_s, 1),
        "memory/peak_rss_gb": round(peak_rss_gb(), 3),
        "base_model": base_model,
    }
    summary = {key: _finite_or_none(value) for key, value in summary.items()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    if records and stopped is None:
        plot_run(run_dir, records)
    return summary


def _finite_or_none(value):
    """A number of summary.json: None where it is not finite (NaN from the trainer, "nan" as metrics.jsonl logs
    it), so the file is valid JSON with one spelling of "no value"."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (a resumed run: since it was resumed)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
