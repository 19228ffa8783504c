"""The behavior-policy contract every rollout engine implements, and the sampling arguments it takes.

    behavior = build_behavior(config, policy)        # drpo.backends: native torch, vLLM or llama.cpp
    batch = behavior.generate(prompts, group_size=8, max_new_tokens=64, sampling=SamplingParams(eos_id=2, pad_id=0))
    batch.rollout_log_prob                           # log mu of each sampled token, as the engine sampled it
    optimizer.step(); behavior.sync(policy.model)    # the engine serves the new weights (or those of `lag` syncs ago)

The trainer and ``drpo mismatch`` see only :class:`BehaviorPolicy`; an engine is one module of this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contract names these types; importing them would pull torch into the config's imports
    import torch
    from torch import nn

    from drpo.models.sampling import RolloutBatch, StopStrings


@dataclass(frozen=True)
class SamplingParams:
    """How mu samples: the same for every engine, so a run's rollouts differ only in the engine's numerics.

    ``temperature`` divides the logits (0: greedy); ``top_p`` < 1 renormalises over the nucleus (mu is then the
    truncated distribution, pi is not); ``top_k_logprobs`` records mu's k most likely tokens per position;
    ``ignore_eos`` samples every row to ``max_new_tokens``; ``stop`` ends a row at the token completing a stop
    string; ``generator`` seeds the draws (it lives on the policy's device).
    """

    eos_id: int
    pad_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k_logprobs: int = 0
    ignore_eos: bool = False
    stop: StopStrings | None = None
    generator: torch.Generator | None = None


@runtime_checkable
class BehaviorPolicy(Protocol):
    """mu: an engine serving the policy's weights of ``lag`` syncs ago, in its own numerics."""

    mode: str  # the rollout mode it runs (drpo.behavior.modes.ROLLOUT_MODES)
    lag: int

    def generate(self, prompts: list[list[int]], group_size: int, max_new_tokens: int,
                 sampling: SamplingParams) -> RolloutBatch:
        """``group_size`` responses for each prompt (token ids, no padding), rows of a group consecutive, with the
        log-prob under mu of every sampled token (that of the distribution the engine actually drew from)."""
        ...

    def sync(self, policy: nn.Module) -> None:
        """Record the policy's new weights (after an optimizer step) and serve those of ``lag`` syncs ago."""
        ...

    def describe(self) -> dict[str, Any]:
        """What this engine is, for run records and tables: engine, mode, what it rounds, lag, and its own details."""
        ...

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume with the same served weights (the lagged queue)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        ...
