"""Quadratic trust-region regularizers: SPO (ratio width eps) and DRPO (per-token width delta / mu), and
drpo_clipped, an ablation of DRPO (its weight capped at 1) registered beside it.

DRPO is SPO with eps replaced by the token-adaptive width delta / mu that the Binary-TV bound
abs(pi - mu) <= delta implies, which keeps its gradient weight bounded for every token. Each function returns
(J_t, w_t), the objective's value and its gradient weight (the contract: drpo.losses.wrapper); nothing is truncated
or detached in these objectives, so w is the gradient weight of the whole of J. Their weights cross 0
continuously, so each is snapped to exactly 0 on its boundary (``snap_boundary``), where the metrics count a token
as masked, not as corrective.
"""

from __future__ import annotations

import pydantic
import torch

from drpo.losses.inputs import LossInputs
from drpo.losses.metrics import snap_boundary
from drpo.losses.registry import Hyper, register_loss


class SpoHyper(Hyper):
    eps: float = pydantic.Field(0.2, gt=0.0, description="ratio width: w reaches 0 at abs(r - 1) = eps")


@register_loss("spo", SpoHyper, "SPO: quadratic penalty on (r-1), zero-crossing of w at abs(r-1) = eps")
def spo(x: LossInputs, h: SpoHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """SPO (Xie et al. 2025, "Simple Policy Optimization", ICML): PPO's clip replaced by a quadratic penalty on
    r - 1; docs/method.md, Eq. 5.

    J_t = r_t A_t - abs(A_t) / (2 eps) * (r_t - 1)^2.
    w_t = 1 - sign(A_t (r_t - 1)) * abs(r_t - 1) / eps = 1 - sign(A_t) (r_t - 1) / eps: 0 at abs(r_t - 1) = eps on
    the side A_t pushes; unbounded for a rare token (small anchor) with a small absolute shift.
    """
    adv = x.advantages
    objective = (x.ratio * adv).sub_(x.ratio_minus_1.square().mul_(adv.abs() / (2 * h.eps)))  # [B, T]
    return objective, snap_boundary((x.ratio_minus_1 * (adv.sign() / -h.eps)).add_(1), h.eps)


# The recommended delta, the one place every entry point reads it from (drpo train, drpo compare's `drpo`, the TRL
# and verl adapters, the verl recipe's launch script): the highest late accuracy of the delta sweep
# (docs/results/delta, docs/method.md). The public reference's 12.5 is the drpo_reference preset.
DRPO_DELTA = 0.3


class DrpoHyper(Hyper):
    delta: float = pydantic.Field(
        DRPO_DELTA, gt=0.0,
        description="probability-shift width: w reaches 0 at abs(pi - mu) = delta (0.15: dppo_binary_tv's boundary; "
        "0.3 learned best in the delta sweep, docs/results/delta; the public reference uses 12.5, a very weak pull: "
        "above 1 the weight cannot reach 0)",
    )


@register_loss("drpo", DrpoHyper, "DRPO: advantage-weighted quadratic pull-back past the TV boundary abs(pi-mu) = delta")
def drpo(x: LossInputs, h: DrpoHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """DRPO (Yao et al. 2026, "Rethinking the Divergence Regularization in LLM RL", Eq. 8); docs/method.md,
    Eqs. 9-10. mu_t is the anchor.

    J_t = r_t A_t - abs(A_t) * mu_t / (2 delta) * (r_t - 1)^2,   where mu_t (r_t - 1)^2 = (pi_t - mu_t)^2 / mu_t.
    w_t = 1 - sign(A_t (r_t - 1)) * abs(pi_t - mu_t) / delta = 1 - sign(A_t) (pi_t - mu_t) / delta, within
    (1 - 1/delta, 1 + 1/delta): 1 at pi = mu, 0 on the Binary-TV boundary abs(pi - mu) = delta in the direction
    A pushes, negative (corrective) past it, above 1 for a token moving back towards mu.

    pi - mu comes from the two log-probs (``x.shift``), never from the clamped ratio, so a rare token far past
    the boundary is still pulled back; only r (in J's value and in the gradient w r A) is clamped at exp(+-20), a
    bounded step.
    """
    adv = x.advantages
    penalty = x.shift * x.ratio_minus_1  # [B, T] = mu * (r-1)^2
    objective = (x.ratio * adv).sub_(penalty.mul_(adv.abs() / (2 * h.delta)))
    return objective, snap_boundary((x.shift * (adv.sign() / -h.delta)).add_(1), h.delta)


@register_loss("drpo_clipped", DrpoHyper,
               "ablation of DRPO: its weight capped at 1 (no amplification of tokens moving back towards mu)")
def drpo_clipped(x: LossInputs, h: DrpoHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """DRPO without the amplification, w = min(1, w_DRPO): an ablation to measure, not a published method;
    docs/method.md, Eq. 11.

    J_t = r_t A_t - abs(A_t) * mu_t / (2 delta) * max(0, sign(A_t) (r_t - 1))^2: DRPO's penalty on the side A
    pushes towards only.
    w_t = 1 - max(0, sign(A_t) (pi_t - mu_t)) / delta = min(1, w_DRPO):
    - moving back towards mu (against A): w = 1, as in DPPO, where DRPO gives up to 1 + 1/delta;
    - moving the way A pushes: DRPO's weight, falling from 1 to 0 on the Binary-TV boundary abs(pi - mu) = delta
      and corrective (negative) past it.
    It isolates one part of DRPO's weight (docs/results/README.md, delta sweep): whether amplifying the converging
    tokens slows learning.
    """
    adv = x.advantages
    sign = adv.sign()
    diverging = (x.shift * sign) > 0  # [B, T] pi moved the way A pushes (shift and r - 1 share their sign)
    penalty = (x.shift * x.ratio_minus_1).mul_(diverging)  # [B, T] mu * (r-1)^2 on the diverging side, else 0
    objective = (x.ratio * adv).sub_(penalty.mul_(adv.abs() / (2 * h.delta)))
    return objective, snap_boundary((x.shift * (sign / -h.delta)).add_(1), h.delta).clamp_(max=1.0)
