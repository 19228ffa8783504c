"""LossInputs: the checked tensors of one loss call, and the quantities several losses share, each computed once.

A loss reads pi, the anchor (mu, or pi_old for ``anchor="recompute"``), the advantages and the mask from here,
and the derived tensors below: the ratio r = pi / anchor, the shift pi - anchor, the binary KL. Each is cached
(``functools.cached_property``), so a loss and the metrics never compute the same thing twice. They are
read-only for a loss: the wrapper and the metrics read them after it.
"""

from __future__ import annotations

from functools import cached_property

import torch

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 4.9e8: past that the ratio carries no information, only overflow risk


class LossInputs:
    """Checked tensors of one loss call, plus the derived quantities several losses share.

    All are detached and computed in float32 (float64 when the inputs are float64), even for half inputs.
    ``advantages`` keeps the shape it was given ([B, 1] or [B, T]) and broadcasts.
    """

    def __init__(
        self,
        log_prob: torch.Tensor,
        anchor_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        rollout_topk_ids: torch.Tensor | None,
        rollout_topk_log_probs: torch.Tensor | None,
        logits: torch.Tensor | None,
        rollout_log_prob: torch.Tensor,
        response_ids: torch.Tensor | None = None,
    ):
        dtype = torch.float64 if log_prob.dtype == torch.float64 else torch.float32
        self.log_prob = log_prob.detach().to(dtype)  # [B, T]
        self.anchor_log_prob = anchor_log_prob.detach().to(dtype)  # [B, T]
        self.rollout_log_prob = rollout_log_prob.detach().to(dtype)  # [B, T]
        self.advantages = advantages.detach().to(dtype)  # [B, 1] or [B, T]
        # a float 0/1 mask is used as it is: converting it would cost a pass over [B, T]
        self.mask_f = response_mask.to(dtype) if response_mask.is_floating_point() else (response_mask != 0).to(dtype)
        self.rollout_topk_ids = rollout_topk_ids
        self.rollout_topk_log_probs = rollout_topk_log_probs
        self.logits = logits
        self.response_ids = response_ids  # [B, T] sampled token ids (top-k losses only)

    @cached_property
    def mask(self) -> torch.Tensor:  # [B, T] bool
        return self.mask_f != 0

    @cached_property
    def log_ratio(self) -> torch.Tensor:  # [B, T], clamped: only for the ratio itself, never for pi - mu
        return (self.log_prob - self.anchor_log_prob).clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)

    @cached_property
    def ratio(self) -> torch.Tensor:  # [B, T]
        return self.log_ratio.exp()

    @cached_property
    def anchor_prob(self) -> torch.Tensor:  # [B, T]
        return self.anchor_log_prob.exp()

    @cached_property
    def ratio_minus_1(self) -> torch.Tensor:
        # r - 1 loses ~1e-7 absolute to cancellation near r = 1 (float32); expm1 would cost 4x the time
        return self.ratio - 1

    @cached_property
    def shift(self) -> torch.Tensor:
        """pi - anchor, from the two log-probs. [B, T]

        Not anchor * (r - 1): past the log-ratio clamp that is far too small (mu = 1e-12, pi = 0.5 gives
        4.9e-4 instead of 0.5) and DRPO's weight, the TV mask and the direction tests turn the wrong way.
        """
        return self.log_prob.exp().sub_(self.anchor_prob)

    @cached_property
    def binary_kl(self) -> torch.Tensor:
        """KL(Bernoulli(mu) || Bernoulli(pi)) = mu log(mu/pi) + (1-mu) log((1-mu)/(1-pi)), mu = anchor. [B, T]

        From the unclamped log-ratio and shift (see ``shift``). One log instead of two: (1-pi) = (1-mu) -
        (pi-mu); both floored at the dtype's tiny so that mu = 1 or pi = 1 stay finite.
        """
        tiny = torch.finfo(self.anchor_prob.dtype).tiny
        one_minus_mu = (1 - self.anchor_prob).clamp_(min=tiny)
        one_minus_pi = (one_minus_mu - self.shift).clamp_(min=tiny)
        log_odds = one_minus_pi.reciprocal_().mul_(one_minus_mu).log_()  # log((1-mu)/(1-pi))
        log_ratio = self.log_prob - self.anchor_log_prob  # log(pi/mu), unclamped
        # a KL is >= 0; float32 rounding can leave -1e-8 where pi ~ mu
        return log_odds.mul_(one_minus_mu).sub_(log_ratio.mul_(self.anchor_prob)).clamp_(min=0)

    def computed(self, name: str) -> torch.Tensor | None:
        """A cached tensor (e.g. ``binary_kl``) if a loss already computed it, else None: metrics report a
        statistic only when it costs nothing."""
        return self.__dict__.get(name)  # where functools.cached_property stores its value

    @cached_property
    def pushed_up(self) -> torch.Tensor:
        """A > 0: the advantage pushes pi up. [B, 1] or [B, T] bool"""
        return self.advantages > 0

    @cached_property
    def pushed_down(self) -> torch.Tensor:
        return self.advantages < 0
