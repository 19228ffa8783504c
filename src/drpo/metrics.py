"""Metric keys and where they go: metrics.jsonl, the trackers of ``report_to``, the console line.

Keys that reports and checks rely on:
    step, reward/mean, eval/accuracy, eval/sampled_accuracy, eval/prompts
    mismatch/abs_mean, mismatch/max, mismatch/min, mismatch/kl      (pi_old - mu, drpo.mismatch.stats.step_metrics)
    mismatch/abs_p_p99, ...                                          (the tail, from the same function)
    loss/weight_mean, loss/weight_min, loss/weight_max, loss/weight_dev (mean |w - 1|),
    loss/masked_frac (w = 0), loss/corrective_frac (w < 0), loss/amplified_frac (w > 1),
    ratio/max, shift/*                                               (from drpo.losses)
    diagnose/pg_grad_norm, diagnose/pull_grad_norm, diagnose/pull_to_pg   (diagnose_pull=true, drpo.diagnostics)
    entropy, response_length/mean, grad_norm, time/rollout_s, time/update_s, time/sync_s, throughput/tokens_per_s
    reward/NAME/mean, reward/NAME/errors, reward/unscored_frac       (task=custom, per reward function)

Trackers (``report_to``, TRL's spelling): tensorboard writes OUT/tb; wandb starts a run in project
$WANDB_PROJECT (default drpo) named after OUT, with the config, writing under OUT/wandb (WANDB_MODE=offline
needs no network; `wandb sync` uploads later). Every metric goes to each, at its step.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from drpo.constants import TRACKERS

# timings differ between two runs of the same seed; everything else must not
TIMING_PREFIXES = ("time/", "throughput/")


def mean_of(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of metric dicts (e.g. over mini-batches); max/min keys keep their extreme."""
    keys = {k for d in dicts for k in d}
    out = {}
    for key in keys:
        values = [d[key] for d in dicts if key in d]
        if key.endswith(("/max", "_max")):
            out[key] = max(values)
        elif key.endswith(("/min", "_min")):
            out[key] = min(values)
        else:
            out[key] = sum(values) / len(values)
    return out


class MetricsLogger:
    """Appends one JSON object per step to metrics.jsonl and mirrors the scalars to each tracker of ``report_to``."""

    def __init__(self, run_dir: Path, report_to=("tensorboard",), resume_step: int | None = None,
                 config: dict | None = None):
        unknown = sorted(set(report_to) - set(TRACKERS))
        if unknown:
            raise ValueError(f"report_to: unknown tracker(s) {', '.join(unknown)}; valid: {', '.join(TRACKERS)}")
        self.path = run_dir / "metrics.jsonl"
        # a new run owns its file; a resumed one drops the steps logged after its checkpoint (they rerun)
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [line for line in complete_lines(self.path) if json.loads(line)["step"] <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = self.wandb_run = None
        if "tensorboard" in report_to:
            # lazy: tensorboard, imported only when report_to names it
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run hides the events of the steps after its checkpoint, which it logs again
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)
        if "wandb" in report_to:
            self.wandb_run = _start_wandb(run_dir, config)

    def log(self, metrics: dict[str, float]) -> None:
        record = {k: (v if isinstance(v, int) or math.isfinite(v) else str(v)) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, metrics["step"])
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=metrics["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _start_wandb(run_dir: Path, config: dict | None):
    try:
        import wandb  # lazy: optional dependency (drpo[wandb])
    except ImportError as error:
        raise ImportError("report_to=wandb needs wandb: pip install 'drpo[wandb]' (or report_to=tensorboard, "
                          "report_to=none)") from error
    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "drpo"), name=run_dir.name, dir=str(run_dir),
                      config=config)


def complete_lines(path: Path) -> list[str]:
    """The non-empty lines of a JSON-lines log that a resumed run keeps. A run killed while writing leaves its last
    line cut off (no newline, not valid JSON): that line alone is dropped, with a warning."""
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            warnings.warn(f"{path}: dropped its last line, cut off when the run was stopped while writing it "
                          f"({len(lines[-1])} characters)", stacklevel=2)
            lines.pop()
    return lines


def read_metrics(path: str | Path) -> list[dict]:
    """metrics.jsonl -> list of dicts (a run directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
