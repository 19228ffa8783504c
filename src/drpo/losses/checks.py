"""What every entry point says about the loss it built (`drpo train`, `drpo compare`, `drpo losses`, the TRL
and verl adapters): where each hyper-parameter came from, and a trust region too wide to bind.

A trust region *binds* when the gradient weight w of a token can reach 0 (the token stops pushing) and go
past it (the token is pulled back). Where it cannot, the loss is a policy gradient with a mild reweighting,
whatever its name; docs/method.md derives the bounds below.

- DRPO (and drpo_clipped): w = 1 - sign(A) (pi - mu) / delta. A sampled token has mu > 0 and pi <= 1, so
  |pi - mu| < 1 and w stays inside (1 - 1/delta, 1 + 1/delta): for delta >= 1 it never reaches 0, on any
  token, in either direction (the public reference's 12.5 keeps w within 1 -+ 0.08).
- SPO: w = 1 - sign(A) (r - 1) / eps with r = pi / mu in (0, inf). For A > 0 the weight reaches 0 at
  r = 1 + eps, reachable for every eps; for A < 0 it reaches 0 at r = 1 - eps, which needs eps < 1. So
  for eps >= 1 SPO binds only on the tokens pushed up: a token pushed down keeps w > 1 - 1/eps >= 0.
"""

from __future__ import annotations

import warnings

from drpo.losses.wrapper import Loss


def cannot_bind(loss: Loss) -> str | None:
    """Why ``loss``'s trust region cannot bind, with the bound on its weight; None when it can."""
    from drpo.losses.quadratic import DRPO_DELTA

    hyper = loss.hyper
    if loss.name in ("drpo", "drpo_clipped") and hyper.delta >= 1:
        high = "1]" if loss.name == "drpo_clipped" else f"{_off_one(1 + 1 / hyper.delta)})"  # drpo_clipped: w <= 1
        return (f"{loss!r}: delta={hyper.delta:g} >= 1, so the trust region cannot bind. |pi - mu| < 1 for every "
                f"sampled token, so the weight w = 1 - sign(A)(pi - mu)/delta stays within ({_off_one(1 - 1 / hyper.delta)}, "
                f"{high} and never reaches 0: no token is stopped or pulled back, only reweighted. A delta below 1 "
                f"binds (recommended: {DRPO_DELTA:g}; docs/method.md)")
    if loss.name == "spo" and hyper.eps >= 1:
        return (f"{loss!r}: eps={hyper.eps:g} >= 1, so the trust region cannot bind on tokens pushed down (A < 0): "
                f"their ratio r > 0 keeps the weight w = 1 + (r - 1)/eps above {_off_one(1 - 1 / hyper.eps)}, never 0. It "
                "binds only on tokens pushed up (w = 0 at r = 1 + eps). An eps below 1 binds both ways (docs/method.md)")
    return None


def warn_if_cannot_bind(loss: Loss, stacklevel: int = 2) -> str | None:
    """:func:`cannot_bind` as a UserWarning (the adapters' and the library's channel); returns the message."""
    message = cannot_bind(loss)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
    return message


def resolved(loss: Loss, sources: dict[str, str]) -> str:
    """'get_loss('drpo', anchor='rollout', delta=0.2): delta from actor.clip_ratio, anchor: default': the bound
    loss and where each hyper-parameter came from (``sources``: hyper-parameter -> where; the rest are the
    loss's defaults, drpo.losses)."""
    origins = ", ".join(f"{key} from {sources[key]}" if key in sources else f"{key}: drpo's default"
                        for key in loss.hyper.model_dump())
    return f"{loss!r}: {origins}"


def _off_one(bound: float) -> str:
    """A bound near 1 with enough digits to show it is not 1 (delta=1e9: 0.999999999, not "1")."""
    for digits in range(3, 18):
        text = f"{bound:.{digits}g}"
        if bound == 1 or float(text) != 1:
            return text
    return repr(bound)
