"""What every entry point says about the loss it built (`drpo train`, `drpo compare`, `drpo losses`, the TRL
and verl adapters): where each hyper-parameter came from, and a trust region too wide to bind.

A trust region *binds* when the gradient weight w of a token can reach 0 (the token stops pushing) and go
past it (the token is pulled back). Where it cannot, the loss is a policy gradient with a mild reweighting,
whatever its name; docs/method.md derives the bounds. Each loss states its own: the ``cannot_bind`` function
of its spec (drpo.losses.registry), e.g. DRPO's and SPO's in drpo.losses.quadratic.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drpo.losses.wrapper import Loss


def cannot_bind(loss: Loss) -> str | None:
    """Why ``loss``'s trust region cannot bind, with the bound on its weight; None when it can (its spec's
    ``cannot_bind``, after the bound loss)."""
    check = loss.spec.cannot_bind
    reason = None if check is None else check(loss.hyper)
    return None if reason is None else f"{loss!r}: {reason}"


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


def off_one(bound: float) -> str:
    """A bound near 1 with enough digits to show it is not 1 (delta=1e9: 0.999999999, not "1")."""
    for digits in range(3, 18):
        text = f"{bound:.{digits}g}"
        if bound == 1 or float(text) != 1:
            return text
    return repr(bound)
