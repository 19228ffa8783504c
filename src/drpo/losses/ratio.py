"""Ratio-based trust regions: importance-sampled policy gradient, PPO/GRPO clipping, CISPO.

Each loss returns (objective J_t, gradient weight w_t) with d J_t / d log pi_t = w_t * r_t * A_t.
"""

from __future__ import annotations

import pydantic
import torch

from drpo.losses.base import Hyper, LossInputs, register_loss


class PgIsHyper(Hyper):
    trunc: float | None = pydantic.Field(None, gt=1.0, description="truncate the IS ratio at C (None: no truncation)")


@register_loss("pg_is", PgIsHyper, "importance-sampled policy gradient, no trust region (optional ratio truncation)")
def pg_is(x: LossInputs, h: PgIsHyper):
    """J = sg(min(r, C)) * A * log pi.  w = min(r, C) / r (1 without truncation)."""
    coef = x.ratio_detached if h.trunc is None else x.ratio_detached.clamp(max=h.trunc)  # [B, T]
    objective = coef * x.advantages * x.log_prob
    weight = torch.ones_like(coef) if h.trunc is None else coef / x.ratio_detached
    return objective, weight


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
    r, adv = x.ratio, x.advantages
    objective = torch.minimum(r * adv, r.clamp(1 - h.eps_low, 1 + h.eps_high) * adv)  # [B, T]
    r_d = x.ratio_detached
    clipped = ((adv > 0) & (r_d > 1 + h.eps_high)) | ((adv < 0) & (r_d < 1 - h.eps_low))
    if h.dual_clip is not None:
        objective = torch.where(adv < 0, torch.maximum(objective, h.dual_clip * adv), objective)
        clipped |= (adv < 0) & (r_d > h.dual_clip)
    return objective, (~clipped).to(r_d.dtype)


class CispoHyper(Hyper):
    eps_low: float = pydantic.Field(1.0, gt=0.0, le=1.0, description="IS weight >= 1 - eps_low (1.0: no lower bound)")
    eps_high: float = pydantic.Field(0.28, gt=0.0, description="IS weight <= 1 + eps_high")


@register_loss("cispo", CispoHyper, "CISPO: clipped, stop-gradient IS weight on every token (never drops a token)")
def cispo(x: LossInputs, h: CispoHyper):
    """J = sg(clip(r, 1-eps_low, 1+eps_high)) * A * log pi.  w = clip(r) / r, never 0."""
    coef = x.ratio_detached.clamp(1 - h.eps_low, 1 + h.eps_high)  # [B, T]
    return coef * x.advantages * x.log_prob, coef / x.ratio_detached
