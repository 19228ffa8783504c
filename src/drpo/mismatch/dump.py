"""Writers of the log-prob file from inside training: our trainer, and the verl / TRL adapters' loss calls.

- the trainer (``dump_log_probs=true``): OUT/log_probs.jsonl, one record per response each step, with
  mu (the sampler's log-probs), pi_old (recomputed before the updates) and pi (at its mini-batch's update);
- an adapter's loss call (:class:`CallDump`): whatever that call sees, one record per row, numbered by
  the engine's step when it is known, else by the call. verl is configured through its own closed schema,
  so its writer is switched on by the environment variable ``DRPO_DUMP_LOG_PROBS=FILE``; TRL's by
  ``DRPOConfig(drpo_dump_log_probs=FILE)``. In a multi-process run each process writes FILE.rank<N>.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import torch

from drpo.mismatch.format import LogProbWriter, records_from_batch

DUMP_ENV = "DRPO_DUMP_LOG_PROBS"
DUMP_FILE = "log_probs.jsonl"


class TrainerDump:
    """OUT/log_probs.jsonl of a `drpo train` run; a resumed run keeps the steps up to its checkpoint."""

    def __init__(self, run_dir: str | Path, engine: str, resume_step: int | None = None):
        self.writer = LogProbWriter(Path(run_dir) / DUMP_FILE, resume_step)
        self.engine = engine

    def write_step(self, step: int, policy_version: int, batch, advantages: torch.Tensor,
                   old_log_prob: torch.Tensor | None, log_prob: torch.Tensor) -> None:
        """One step: ``batch`` the rollout (mu, mask [N, T]), ``advantages`` [N], pi_old [N, T] or None, and
        ``log_prob`` [N, T] each row's pi at its mini-batch's update."""
        self.writer.write(records_from_batch(
            batch.rollout_log_prob, batch.response_mask, old_log_prob=old_log_prob, log_prob=log_prob,
            advantages=advantages, step=step, policy_version=policy_version, engine=self.engine))


class CallDump:
    """Appends the tensors of each loss call of an adapter to a log-prob file (JSONL or parquet)."""

    def __init__(self, path: str | Path):
        self.writer = LogProbWriter(rank_path(path))
        self.calls = 0
        atexit.register(self.writer.close)  # a parquet file needs its footer; JSONL is complete after each call

    def write(self, *, rollout_log_prob: torch.Tensor, log_prob: torch.Tensor, mask: torch.Tensor,
              advantages: torch.Tensor, old_log_prob: torch.Tensor | None = None, step: int | None = None,
              engine: str) -> None:
        """Tensors [B, T] (advantages [B] or [B, T]); ``step`` defaults to the number of this call."""
        step = self.calls if step is None else step
        self.writer.write(records_from_batch(
            rollout_log_prob, mask, old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
            step=step, ids=[f"{step}/{self.calls}/{row}" for row in range(mask.shape[0])], engine=engine))
        self.calls += 1


_ENV_DUMPS: dict[str, CallDump] = {}


def env_dump() -> CallDump | None:
    """The process's CallDump for the file named by $DRPO_DUMP_LOG_PROBS, or None when it is unset."""
    path = os.environ.get(DUMP_ENV)
    if not path:
        return None
    if path not in _ENV_DUMPS:
        _ENV_DUMPS[path] = CallDump(path)
    return _ENV_DUMPS[path]


def rank_path(path: str | Path) -> Path:
    """FILE, or FILE.rank<N>.<suffix> when several distributed processes would write it."""
    path = Path(path)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return path.with_name(f"{path.stem}.rank{torch.distributed.get_rank()}{path.suffix}")
    return path
