"""summary.json and plots at the end of a run: start, final and best eval accuracy, steps, wall time, peak memory."""

from __future__ import annotations

import json
import resource
import sys

from drpo.metrics import read_metrics
from drpo.plots import plot_run


def write_summary(trainer, wall_s: float, interrupted: bool) -> dict:
    run_dir = trainer.run_dir
    records = read_metrics(run_dir)
    evals = [r for r in records if "eval/accuracy" in r]
    summary = {
        "loss": trainer.loss.name,
        "loss_hyper": trainer.loss.hyper.model_dump(),
        "steps": trainer.step,
        "steps_planned": trainer.config.steps,
        "interrupted": interrupted,
        # from the trainer, not the file: a run resumed into a new directory has the earlier evaluations only there
        "eval/accuracy_start": trainer.start_accuracy,
        "eval/accuracy_final": evals[-1]["eval/accuracy"] if evals else None,
        "eval/accuracy_best": trainer.best_accuracy,
        "eval/sampled_accuracy_final": evals[-1].get("eval/sampled_accuracy") if evals else None,
        "reward/mean_first": next((r["reward/mean"] for r in records if "reward/mean" in r), None),
        "reward/mean_last": next((r["reward/mean"] for r in reversed(records) if "reward/mean" in r), None),
        "mismatch/abs_mean_peak": max((r["mismatch/abs_mean"] for r in records if "mismatch/abs_mean" in r),
                                      default=None),
        "wall_time_s": round(wall_s, 1),
        "memory/peak_rss_gb": round(peak_rss_gb(), 3),
        "base_model": trainer.policy.base_info,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if records:
        plot_run(run_dir, records)
    return summary


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (a resumed run: since it was resumed)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
