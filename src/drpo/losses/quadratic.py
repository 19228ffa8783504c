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

from drpo.losses.checks import off_one
from drpo.losses.inputs import LossInputs
from drpo.losses.metrics import snap_boundary
from drpo.losses.registry import ConfigMap, Hyper, LabMethod, Preset, register_loss


class SpoHyper(Hyper):
    eps: float = pydantic.Field(0.2, gt=0.0, description="ratio width: w reaches 0 at abs(r - 1) = eps")


def spo_cannot_bind(h: SpoHyper) -> str | None:
    """w = 1 - sign(A) (r - 1) / eps with r = pi / mu in (0, inf). For A > 0 the weight reaches 0 at r = 1 + eps,
    reachable for every eps; for A < 0 it reaches 0 at r = 1 - eps, which needs eps < 1. So for eps >= 1 SPO binds
    only on the tokens pushed up: a token pushed down keeps w > 1 - 1/eps >= 0 (docs/method.md)."""
    if h.eps < 1:
        return None
    return (f"eps={h.eps:g} >= 1, so the trust region cannot bind on tokens pushed down (A < 0): their ratio r > 0 "
            f"keeps the weight w = 1 + (r - 1)/eps above {off_one(1 - 1 / h.eps)}, never 0. It binds only on tokens "
            "pushed up (w = 0 at r = 1 + eps). An eps below 1 binds both ways (docs/method.md)")


@register_loss("spo", SpoHyper, "SPO: quadratic penalty on (r-1), zero-crossing of w at abs(r-1) = eps",
               cannot_bind=spo_cannot_bind, verl=ConfigMap({"eps": "clip_ratio"}, order=20),
               methods=(LabMethod("spo", order=110),))
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


def drpo_cannot_bind(clipped: bool):
    """DRPO's check (``clipped``: drpo_clipped's, whose w <= 1). w = 1 - sign(A) (pi - mu) / delta, and a sampled
    token has mu > 0 and pi <= 1, so |pi - mu| < 1 and w stays inside (1 - 1/delta, 1 + 1/delta): for delta >= 1
    it never reaches 0, on any token, in either direction (the public reference's 12.5 keeps w within 1 -+ 0.08)."""

    def check(h: DrpoHyper) -> str | None:
        if h.delta < 1:
            return None
        high = "1]" if clipped else f"{off_one(1 + 1 / h.delta)})"
        return (f"delta={h.delta:g} >= 1, so the trust region cannot bind. |pi - mu| < 1 for every sampled token, so "
                f"the weight w = 1 - sign(A)(pi - mu)/delta stays within ({off_one(1 - 1 / h.delta)}, {high} and "
                f"never reaches 0: no token is stopped or pulled back, only reweighted. A delta below 1 binds "
                f"(recommended: {DRPO_DELTA:g}; docs/method.md)")

    return check


@register_loss(
    "drpo", DrpoHyper, "DRPO: advantage-weighted quadratic pull-back past the TV boundary abs(pi-mu) = delta",
    boundary=("delta",), cannot_bind=drpo_cannot_bind(clipped=False), verl=ConfigMap({"delta": "clip_ratio"}, order=10),
    # The public DRPO reference ships delta ("epsilon") = 12.5: the weight's zero-crossing sits at a probability
    # shift of 12.5, never reached (w stays within [0.92, 1.08]: drpo_cannot_bind), so it is a weak pull towards mu
    # on every token; measured in docs/results/delta (2 of 5 seeds collapsed under strong staleness). The
    # recommended delta is DRPO_DELTA, drpo's default.
    presets=(Preset("drpo_reference", {"delta": 12.5}, order=10),),
    methods=(LabMethod("drpo", {"delta": DRPO_DELTA}, order=140),  # best in the delta sweep (docs/results/delta)
             LabMethod("drpo_reference", {"delta": 12.5}, order=150)),  # the public reference: a very weak regularizer
)
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
               "ablation of DRPO: its weight capped at 1 (no amplification of tokens moving back towards mu)",
               boundary=("delta",), cannot_bind=drpo_cannot_bind(clipped=True))
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
