"""The policy's weights of ``lag`` syncs ago: the staleness of asynchronous RL, the same for every engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import nn


class LaggedWeights:
    """The policy's weights of ``lag`` syncs ago, kept for a behavior policy of any engine.

    ``snapshot(policy)`` copies the policy's weights as the backend loads them (on the CPU, in the dtype loading
    would round them to anyway). With lag > 0 each :meth:`sync` stores a snapshot in a queue of the last
    ``lag + 1`` and :meth:`served` is the oldest; until ``lag`` syncs have happened that is the initial policy.
    :meth:`state_dict` holds the queue, so a trainer checkpoint resumes with exactly the stale weights it had;
    it costs (lag + 1) x parameters x 2 bytes in bf16, in memory and in each checkpoint file. With lag 0
    nothing is stored and :meth:`served` is None: the backend serves the policy's current weights.
    """

    def __init__(self, policy: nn.Module, mode: str, lag: int,
                 snapshot: Callable[[nn.Module], dict[str, torch.Tensor]]) -> None:
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.mode, self.lag, self.snapshot = mode, lag, snapshot
        self.states: deque[dict[str, torch.Tensor]] = deque([snapshot(policy)] if lag else [], maxlen=lag + 1)

    def sync(self, policy: nn.Module) -> None:
        """Record the policy's new weights (after an optimizer step)."""
        if self.lag:
            self.states.append(self.snapshot(policy))

    def served(self) -> dict[str, torch.Tensor] | None:
        """The weights to serve now: those of ``lag`` syncs ago; None with lag 0 (the policy's own)."""
        return self.states[0] if self.lag else None

    def state_dict(self) -> dict:
        return {"mode": self.mode, "lag": self.lag, "states": [dict(s) for s in self.states]}

    def load_state_dict(self, state: dict) -> None:
        """The queue of a :meth:`state_dict`, once it is known to match ``mode`` and ``lag`` (a checkpoint
        resumed under other rollout settings would serve the wrong weights). Checkpoints written before the
        engines shared drpo.behavior name the mode ``precision``."""
        mode = state["mode"] if "mode" in state else state["precision"]
        if (mode, state["lag"]) != (self.mode, self.lag):
            raise ValueError(f"behavior state was saved with rollout.precision={mode!r}, lag={state['lag']}; "
                             f"this behavior policy has rollout.precision={self.mode!r}, lag={self.lag}")
        self.states = deque((_clone_state(s) for s in state["states"]), maxlen=self.lag + 1)


def _clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` in which a tensor stored under two names (a tied weight) stays one tensor."""
    clones: dict[int, torch.Tensor] = {}
    for value in state.values():
        if id(value) not in clones:
            clones[id(value)] = value.clone()
    return {k: clones[id(v)] for k, v in state.items()}


class ServesLaggedWeights:
    """What every engine does with its :class:`LaggedWeights` ``weights``: record a sync, save and restore the queue
    (marked with the engine that saved it), then serve the weights of ``lag`` syncs ago through the engine's own
    ``_serve()`` (a copy into a torch model, vLLM's load_weights, a GGUF written and loaded)."""

    engine: str
    weights: LaggedWeights
    policy: nn.Module

    def _serve(self) -> None:
        raise NotImplementedError

    def sync(self, policy: nn.Module) -> None:
        """Record the policy's new weights (after an optimizer step) and serve those of ``lag`` syncs ago."""
        self.policy = policy
        self.weights.sync(policy)
        self._serve()

    def state_dict(self) -> dict:
        return {"engine": self.engine, **self.weights.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the queue of stale weights with lag > 0; with lag 0, the weights of the (restored) policy. A state
        saved by another engine is refused (states saved before the marker existed have none, or `backend`)."""
        saved_by = state.get("engine", state.get("backend", self.engine))
        if saved_by != self.engine:
            raise ValueError(f"behavior state was saved by the {saved_by!r} engine, not {self.engine!r}")
        self.weights.load_state_dict({key: value for key, value in state.items() if key not in ("engine", "backend")})
        self._serve()

