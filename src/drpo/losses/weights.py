"""Gradient-weight curves w(pi - mu) for plots, taken from the losses themselves (never re-derived)."""

from __future__ import annotations

import torch

from drpo.losses.wrapper import Loss


def weight_curve(loss: Loss, mu: float, shifts: torch.Tensor, advantage: float) -> torch.Tensor:
    """w_t of ``loss`` for one token with rollout probability ``mu`` as pi - mu sweeps ``shifts``.

    Shifts that would put pi outside (0, 1) are returned as NaN so plots leave them out.
    """
    pi = mu + shifts.double()  # [S]
    valid = (pi > 0) & (pi < 1)
    log_pi = torch.where(valid, pi, torch.full_like(pi, mu)).log().unsqueeze(0)  # [1, S]
    log_mu = torch.full_like(log_pi, mu).log()
    out = loss(log_prob=log_pi, rollout_log_prob=log_mu, old_log_prob=log_mu,
               advantages=torch.full_like(log_pi, advantage), response_mask=torch.ones_like(log_pi))
    return torch.where(valid, out.weight[0], torch.full_like(pi, float("nan")))
