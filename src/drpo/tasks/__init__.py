"""Verifiable synthetic tasks for RL on the CPU: prompts, reference answers, an exact-match verifier.

    task = get_task("arith", seed=0, digits=3)
    task.train[0]                      # Example(prompt='...+...=', answer='...')
    task.reward(completion, example)   # 1.0 or 0.0, never raises
"""

from __future__ import annotations

import inspect

from drpo.tasks.arith import Arith
from drpo.tasks.base import Example, Scores, Task
from drpo.tasks.chain import Chain
from drpo.tasks.custom import CustomTask
from drpo.tasks.math import MathTask
from drpo.tasks.sort import Sort

_REGISTRY: dict[str, type[Task]] = {"arith": Arith, "sort": Sort, "chain": Chain, "math": MathTask, "custom": CustomTask}
TASKS: tuple[str, ...] = tuple(_REGISTRY)
SYNTHETIC_TASKS: tuple[str, ...] = ("arith", "sort")  # generated, with the built-in model's compact phrasing (chain: chat only)


def get_task(name: str, seed: int = 0, **options) -> Task:
    """The task ``name`` with its splits drawn from ``seed``; ``options`` are the task's keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    cls = _REGISTRY[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "seed")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return cls(seed=seed, **options)


__all__ = ["SYNTHETIC_TASKS", "TASKS", "Arith", "Chain", "CustomTask", "Example", "Scores", "Sort", "Task", "get_task"]
