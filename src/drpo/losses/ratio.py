"""Ratio-based trust regions: the importance-sampled policy gradient, PPO/GRPO clipping, CISPO.

Each function returns (J_t, w_t): the value of its method's per-token objective J_t and its gradient weight,
d J_t / d log pi_t = w_t * r_t * A_t with r_t = pi_t / anchor_t (the contract: drpo.losses.wrapper). sg(.) is
stop-gradient.
"""

from __future__ import annotations

import pydantic
import torch

from drpo.losses.inputs import LossInputs
from drpo.losses.registry import ConfigMap, Hyper, LabMethod, Preset, register_loss


class PgIsHyper(Hyper):
    trunc: float | None = pydantic.Field(None, gt=1.0, description="truncate the IS ratio at C (None: no truncation)")


@register_loss("pg_is", PgIsHyper, "importance-sampled policy gradient, no trust region (optional ratio truncation)",
               methods=(LabMethod("pg_is", order=10),))  # no trust region
def pg_is(x: LossInputs, h: PgIsHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled policy gradient, no trust region (docs/method.md, Eq. 2); with C, truncated
    importance sampling (TIS: Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training").

    J_t = sg(min(r_t, C) / r_t) * r_t * A_t, of value min(r_t, C) A_t, C = ``trunc`` (without C: r_t A_t, the
    importance-sampled objective). Its gradient is that of the surrogate sg(min(r_t, C)) A_t log pi_t.
    w_t = min(r_t, C) / r_t, 1 without truncation.
    """
    if h.trunc is None:
        return x.ratio * x.advantages, torch.ones_like(x.ratio)
    truncated = x.ratio.clamp(max=h.trunc)  # [B, T]
    objective = truncated * x.advantages  # before the weight reuses ``truncated`` in place
    return objective, truncated.div_(x.ratio)


class PpoClipHyper(Hyper):
    eps_low: float = pydantic.Field(0.2, gt=0.0, lt=1.0, description="lower clip: r >= 1 - eps_low")
    eps_high: float = pydantic.Field(0.2, gt=0.0, description="upper clip: r <= 1 + eps_high (0.28: DAPO clip-higher)")
    dual_clip: float | None = pydantic.Field(None, gt=1.0, description="dual-clip c: for A<0 bound J below by c*A")


@register_loss(
    "ppo_clip", PpoClipHyper, "PPO/GRPO ratio clipping (clip-higher via eps_high, optional dual-clip)",
    aliases=("grpo",),
    # GRPOTrainer's own loss, its widths in TRL's names (DRPOConfig refuses them and names these)
    trl=ConfigMap({"eps_low": "epsilon", "eps_high": "epsilon_high", "dual_clip": "delta"}),
    presets=(
        Preset("ppo_clip_higher", {"eps_low": 0.2, "eps_high": 0.28}, order=20),  # DAPO clip-higher
        # clip-higher anchored on pi_old with no correction for mu at all (what `minirl` meant before it followed
        # the paper): staleness is clipped, the sampler's mismatch is ignored
        Preset("ppo_clip_recompute", {"eps_low": 0.2, "eps_high": 0.28, "anchor": "recompute"}, order=30),
    ),
    methods=(
        LabMethod("ppo_clip_higher", {"eps_low": 0.2, "eps_high": 0.28}, order=30),  # DAPO clip-higher
        # clip-higher on pi/pi_old, nothing for mu (this label was "minirl" in sweeps published before MiniRL was
        # corrected)
        LabMethod("ppo_clip_recompute", loss="ppo_clip_recompute", order=40),
    ),
)
def ppo_clip(x: LossInputs, h: PpoClipHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", Eq. 7), as GRPO
    uses it (Shao et al. 2024, "DeepSeekMath"), with DAPO's clip-higher eps_high > eps_low (Yu et al. 2025) and
    the dual-clip of Ye et al. 2020 ("Mastering Complex Control in MOBA Games with Deep Reinforcement
    Learning"); docs/method.md, Eq. 3.

    J_t = min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t); with dual-clip c, max(J_t, c A_t) for A_t < 0.
    w_t = 0 if (A_t > 0 and r_t > 1 + eps_high) or (A_t < 0 and r_t < 1 - eps_low) or (dual-clip, A_t < 0 and
    r_t > c), else 1: a clipped token's J_t is a constant.
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


@register_loss("cispo", CispoHyper, "CISPO: clipped, stop-gradient IS weight on every token (never drops a token)",
               verl=ConfigMap(refused="verl ships its own 'cispo'; we do not shadow it"),
               methods=(LabMethod("cispo", order=20),))  # clipped stop-gradient IS weight, never drops a token
def cispo(x: LossInputs, h: CispoHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention"): the
    importance weight is clipped and detached, so no token loses its gradient; docs/method.md, Eq. 4.

    J_t = sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A_t * log pi_t, the published objective, log pi_t in its value.
    w_t = clip(r_t, 1 - eps_low, 1 + eps_high) / r_t, never 0.
    """
    clipped = x.ratio.clamp(1 - h.eps_low, 1 + h.eps_high)  # [B, T]
    objective = (clipped * x.advantages).mul_(x.log_prob)  # before the weight reuses ``clipped`` in place
    return objective, clipped.div_(x.ratio)
