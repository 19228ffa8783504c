"""The registry: loss names -> specs (the function, its typed hyper-parameters, a one-line summary).

A family module registers each loss with ``@register_loss(name, HyperClass, summary)``; importing
``drpo.losses`` imports the families, in the order ``drpo losses`` lists them. ``get_loss`` (drpo.losses.wrapper)
binds a name to validated hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pydantic
import torch

from drpo.losses.inputs import LossInputs
from drpo.validation import describe_fields


class Hyper(pydantic.BaseModel):
    """Hyper-parameters shared by every ratio- or mask-based loss."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    anchor: Literal["rollout", "recompute"] = pydantic.Field(
        "rollout",
        description="reference of the ratio and trust region: rollout = mu (behavior policy), "
        "recompute = pi_old (trainer's recomputed log-probs, as decoupled PPO clips)",
    )


# fn(x, hyper) -> (objective J, gradient weight w), each [B, T]: the contract, and what the wrapper does with them,
# in drpo.losses.wrapper
LossFn = Callable[[LossInputs, Hyper], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    hyper: type[Hyper]
    summary: str
    needs_topk: bool = False


LOSSES: dict[str, LossSpec] = {}
ALIASES: dict[str, str] = {}


def register_loss(name: str, hyper: type[Hyper], summary: str, aliases: tuple[str, ...] = (), needs_topk: bool = False):
    """Register a loss family function under ``name`` (and ``aliases``)."""

    def decorator(fn: LossFn) -> LossFn:
        if name in LOSSES or name in ALIASES:
            raise ValueError(f"loss '{name}' is registered twice")
        LOSSES[name] = LossSpec(name, fn, hyper, summary, needs_topk)
        for alias in aliases:
            ALIASES[alias] = name
        return fn

    return decorator


def hyper_summary(spec: LossSpec) -> str:
    """'delta=0.15, anchor=...': the family's own hyper-parameters first, the shared anchor last."""
    return describe_fields(spec.hyper, last=("anchor",))
