"""How off-policy is my engine? An engine-independent check of training-inference mismatch.

    drpo mismatch runs/bf16 runs/fp8 --out report/          # files written by our trainer, verl or TRL
    drpo mismatch model=tiny --precisions bf16 fp8 int8      # a model's own rollouts per precision

- format.py: the per-token log-prob file (JSONL / parquet), its validating reader and its writers;
- stats.py: the statistics, pure functions of log-prob arrays (also the trainer's per-step mismatch/* metrics);
- dump.py: writers from inside training (trainer, verl and TRL loss calls);
- model.py: the model mode (mu per rollout precision against the fp32 trainer);
- recommend.py: the delta the committed delta sweep supports for a measured mismatch, read from evidence.json
  (package data, computed from the sweep by ``python -m drpo.lab.evidence``).

The report (console tables, markdown, figures, published reference figures) is the lab's:
drpo/lab/mismatch_report.py and drpo/lab/mismatch_references.py.
"""

from __future__ import annotations

__all__ = [
    "Analysis", "LogProbFileError", "LogProbWriter", "TokenLogProbs", "analyse", "pair_stats", "read_log_probs",
    "records_from_batch", "step_metrics", "write_log_probs",
]


def __getattr__(name: str):
    # lazy: `drpo mismatch --help` reads format.py's docstring and model.py's rollout names, and should not
    # wait for torch, which stats.py imports
    if name in ("LogProbFileError", "LogProbWriter", "TokenLogProbs", "read_log_probs", "records_from_batch",
                "write_log_probs"):
        from drpo.mismatch import format

        return getattr(format, name)
    if name in ("Analysis", "analyse", "pair_stats", "step_metrics"):
        from drpo.mismatch import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'drpo.mismatch' has no attribute {name!r}")
