"""summary.json and plots at the end of a run: start, final and best eval accuracy, steps, wall time, peak memory."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from drpo.metrics import read_metrics
from drpo.plots import plot_run


def write_summary(run_dir: str | Path, *, loss, steps: int, steps_planned: int, start_accuracy: float | None,
                  best_accuracy: float | None, wall_s: float, base_model: dict | None, interrupted: bool = False,
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
        "wall_time_s": round(wall_s, 1),
        "memory/peak_rss_gb": round(peak_rss_gb(), 3),
        "base_model": base_model,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if records and stopped is None:
        plot_run(run_dir, records)
    return summary


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (a resumed run: since it was resumed)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
