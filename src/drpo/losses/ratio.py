"""Ratio-based trust regions: importance-sampled policy gradient, PPO/GRPO clipping, CISPO.

Each loss returns (objective J_t, gradient weight w_t) with d J_t / d log pi_t = w_t * r_t * A_t;
sg(.) is stop-gradient.
"""

from __future__ import annotations

import pydantic
import torch

from drpo.losses.inputs import LossInputs
from drpo.losses.registry import Hyper, register_loss


class PgIsHyper(Hyper):
    trunc: float | None = pydantic.Field(None, gt=1.0, description="truncate the IS ratio at C (None: no truncation)")


@register_loss("pg_is", PgIsHyper, "importance-sampled policy gradient, no trust region (optional ratio truncation)")
def pg_is(x: LossInputs, h: PgIsHyper):
    """J = sg(min(r, C)) * A * log pi.  w = min(r, C) / r (1 without truncation)."""
    if h.trunc is None:
        return None, torch.ones_like(x.ratio)  # the surrogate sg(w r) A log pi: the wrapper forms it
    return None, x.ratio.clamp(max=h.trunc).div_(x.ratio)


class PpoClipHyper(Hyper):
    eps_low: float = pydantic.Field(0.2, gt=0.0, lt=1.0, description="lower clip: r >= 1 - eps_low")
    eps_high: float = pydantic.Field(0.2, gt=0.0, description="upper clip: r <= 1 + eps_high (0.28: DAPO clip-higher)")
    dual_clip: float | None = pydantic.Field(None, gt=1.0, description="dual-clip c: for A<0 bound J below by c*A")


@register_loss("ppo_clip", PpoClipHyper, "PPO/GRPO ratio clipping (clip-higher via eps_high, optional dual-clip)",
               aliases=("grpo",))
def ppo_clip(x: LossInputs, h: PpoClipHyper):
    """J = min(r*A, clip(r, 1-eps_low, 1+eps_high)*A), and max(J, c*A) for A<0 with dual-clip c.

    w = 0 if (A>0 and r>1+eps_high) or (A<0 and r<1-eps_low) or (dual-clip, A<0 and r>c), else 1.
    """
    r = x.ratio  # [B, T]
    clipped = ((r > 1 + h.eps_high) & x.pushed_up) | ((r < 1 - h.eps_low) & x.pushed_down)
    # where not clipped, min(r*A, clip(r)*A) is r*A; where clipped, it is clip(r)*A
    objective = torch.where(clipped, r.clamp(1 - h.eps_low, 1 + h.eps_high), r).mul_(x.advantages)
    if h.dual_clip is not None:
        floored = (r > h.dual_clip) & x.pushed_down
        objective = torch.where(floored, h.dual_clip * x.advantages, objective)
        clipped |= floored
    return objective, clipped.logical_not_().to(r.dtype)


class CispoHyper(Hyper):
    eps_low: float = pydantic.Field(1.0, gt=0.0, le=1.0, description="IS weight >= 1 - eps_low (1.0: no lower bound)")
    eps_high: float = pydantic.Field(0.28, gt=0.0, description="IS weight <= 1 + eps_high")


@register_loss("cispo", CispoHyper, "CISPO: clipped, stop-gradient IS weight on every token (never drops a token)")
def cispo(x: LossInputs, h: CispoHyper):
    """J = sg(clip(r, 1-eps_low, 1+eps_high)) * A * log pi.  w = clip(r) / r, never 0."""
    return None, x.ratio.clamp(1 - h.eps_low, 1 + h.eps_high).div_(x.ratio)  # the surrogate sg(w r) A log pi
