"""How off-policy is my engine? An engine-independent check of training-inference mismatch.

    drpo mismatch runs/bf16 runs/fp8 --out report/          # files written by our trainer, verl or TRL
    drpo mismatch model=tiny --precisions bf16 fp8 int8      # a model's own rollouts per precision

- format.py: the per-token log-prob file (JSONL / parquet), its validating reader and its writers;
- stats.py: the statistics, pure functions of log-prob arrays (also the trainer's per-step mismatch/* metrics);
- references.py: published mismatch figures with their sources;
- report.py: console table, markdown and figure;
- dump.py: writers from inside training (trainer, verl and TRL loss calls);
- model.py: the model mode (mu per rollout precision against the fp32 trainer).
"""

from __future__ import annotations

from drpo.mismatch.format import (
    LogProbFileError,
    LogProbWriter,
    TokenLogProbs,
    read_log_probs,
    records_from_batch,
    write_log_probs,
)
from drpo.mismatch.stats import Analysis, analyse, pair_stats, step_metrics

__all__ = [
    "Analysis", "LogProbFileError", "LogProbWriter", "TokenLogProbs", "analyse", "pair_stats", "read_log_probs",
    "records_from_batch", "step_metrics", "write_log_probs",
]
