"""DPPO: divergence trust regions as hard masks (Binary-TV, Binary-KL, Top-K TV / KL).

A token is dropped only when it has crossed the divergence boundary in the direction its advantage
pushes it (pi > mu for A > 0, pi < mu for A < 0). Kept tokens get the truncated-IS policy gradient
J = sg(min(r, C)) * A * log pi; the gradient weight is w = m * min(r, C) / r with m the 0/1 mask.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

from drpo.losses.base import Hyper, LossInputs, register_loss


class DppoHyper(Hyper):
    trunc: float | None = pydantic.Field(20.0, gt=1.0, description="truncate the IS ratio at C (None: no truncation)")


def _masked_pg(x: LossInputs, keep: torch.Tensor, trunc: float | None):
    """Truncated-IS policy gradient on the kept tokens: the part every DPPO variant shares."""
    weight = keep.to(x.ratio.dtype)  # [B, T]
    if trunc is not None:
        weight.mul_(x.ratio.reciprocal().mul_(trunc).clamp_(max=1))  # min(r, C) / r
    return (weight * x.ratio).mul_(x.log_prob).mul_(x.advantages), weight


def _harmful(x: LossInputs) -> torch.Tensor:
    """Moved the way the advantage pushes: pi > mu for A > 0, pi < mu for A < 0. [B, T] bool"""
    return ((x.shift > 0) & x.pushed_up) | ((x.shift < 0) & x.pushed_down)


class BinaryTvHyper(DppoHyper):
    delta_low: float = pydantic.Field(0.15, gt=0.0, le=1.0, description="drop A<0 tokens with pi - mu < -delta_low")
    delta_high: float = pydantic.Field(0.15, gt=0.0, le=1.0, description="drop A>0 tokens with pi - mu > delta_high")


@register_loss("dppo_binary_tv", BinaryTvHyper, "DPPO Binary-TV: drop tokens whose abs(pi-mu) crossed delta the harmful way")
def dppo_binary_tv(x: LossInputs, h: BinaryTvHyper):
    """m = 0 if (A>0 and pi-mu > delta_high) or (A<0 and pi-mu < -delta_low).  w = m * min(r,C)/r."""
    drop = ((x.shift > h.delta_high) & x.pushed_up) | ((x.shift < -h.delta_low) & x.pushed_down)
    return _masked_pg(x, drop.logical_not_(), h.trunc)


class BinaryKlHyper(DppoHyper):
    delta: float = pydantic.Field(0.05, gt=0.0, description="drop tokens with binary KL(mu || pi) > delta, harmful way")


@register_loss("dppo_binary_kl", BinaryKlHyper, "DPPO Binary-KL: drop tokens whose Bernoulli KL(mu||pi) crossed delta")
def dppo_binary_kl(x: LossInputs, h: BinaryKlHyper):
    """D = mu log(mu/pi) + (1-mu) log((1-mu)/(1-pi)); m = 0 if D > delta and harmful.  w = m * min(r,C)/r."""
    return _masked_pg(x, ~((x.binary_kl > h.delta) & _harmful(x)), h.trunc)


class TopkTvHyper(DppoHyper):
    anchor: Literal["rollout"] = pydantic.Field(
        "rollout", description="top-k needs the anchor's top-k distribution, which only the rollout records")
    delta: float = pydantic.Field(0.15, gt=0.0, le=1.0, description="drop tokens with top-k TV > delta, harmful way")


class TopkKlHyper(TopkTvHyper):
    delta: float = pydantic.Field(0.05, gt=0.0, description="drop tokens with top-k KL(mu || pi) > delta, harmful way")


TOPK_CHUNK_ELEMENTS = 1 << 21  # 8 MiB of float32 logits per chunk bounds the extra memory at any V


@torch.no_grad()
def topk_divergences(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """TV and KL(mu || pi) over mu's top-k tokens, the sampled token when outside them, and a "rest" bucket.

    pi over the top-k ids comes from the logits by a gather minus a chunked log-sum-exp, so no second
    [B, T, V] tensor is ever materialised: the extra memory is one chunk of rows, whatever V is.
    The sampled token is outside the top-k exactly when its mu is below the k-th largest mu.
    Returns (tv, kl), each [B, T].
    """
    logits, ids = x.logits, x.rollout_topk_ids.long()
    batch, length, vocab = logits.shape
    log_z = _chunked_log_z(logits.reshape(batch * length, vocab), x.log_prob.dtype).view(batch, length)  # [B, T]
    pi_topk = (logits.gather(-1, ids).to(log_z.dtype) - log_z.unsqueeze(-1)).exp()  # [B, T, K]
    mu_topk = x.rollout_topk_log_probs.to(log_z.dtype).exp()  # [B, T, K]

    mu_y, pi_y = x.anchor_prob, x.anchor_prob * x.ratio  # [B, T]
    outside = (x.anchor_log_prob < x.rollout_topk_log_probs.min(dim=-1).values).to(mu_y.dtype)  # [B, T]
    mu_rest = (1 - mu_topk.sum(-1) - outside * mu_y).clamp(min=0)  # [B, T]
    pi_rest = (1 - pi_topk.sum(-1) - outside * pi_y).clamp(min=0)

    tv = 0.5 * ((mu_topk - pi_topk).abs().sum(-1) + outside * (mu_y - pi_y).abs() + (mu_rest - pi_rest).abs())
    kl = _kl_terms(mu_topk, pi_topk).sum(-1) + outside * _kl_terms(mu_y, pi_y) + _kl_terms(mu_rest, pi_rest)
    return tv, kl


def _chunked_log_z(flat_logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """log-sum-exp over V of [N, V] logits, a chunk of rows at a time through one reused buffer.

    torch.logsumexp allocates per call, and with several threads the allocator then keeps far more
    than one chunk resident; a reused buffer keeps the extra memory at one chunk.
    """
    num_rows, vocab = flat_logits.shape
    rows = max(1, TOPK_CHUNK_ELEMENTS // vocab)
    buffer = torch.empty(min(rows, num_rows), vocab, dtype=dtype, device=flat_logits.device)
    log_z = torch.empty(num_rows, dtype=dtype, device=flat_logits.device)  # [N]
    for start in range(0, num_rows, rows):
        chunk = flat_logits[start:start + rows]
        work = buffer[: len(chunk)].copy_(chunk)  # [n, V], cast to the compute dtype
        peak = work.amax(-1, keepdim=True)  # [n, 1]
        log_z[start:start + rows] = work.sub_(peak).exp_().sum(-1).log_().add_(peak[:, 0])
    return log_z


def _kl_terms(mu: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """mu * log(mu / pi) with 0 log 0 = 0 and pi floored at the dtype's tiny."""
    tiny = torch.finfo(mu.dtype).tiny
    return torch.where(mu > 0, mu * (mu.clamp(min=tiny).log() - pi.clamp(min=tiny).log()), torch.zeros_like(mu))


@register_loss("dppo_topk_tv", TopkTvHyper, "DPPO Top-K TV: mask by TV over mu's top-k tokens plus a rest bucket",
               needs_topk=True)
def dppo_topk_tv(x: LossInputs, h: TopkTvHyper):
    """D = 1/2 (sum_topk |mu_i - pi_i| + |mu_rest - pi_rest|); m = 0 if D > delta and harmful.  w = m * min(r,C)/r."""
    tv, _ = topk_divergences(x)
    return _masked_pg(x, ~((tv > h.delta) & _harmful(x)), h.trunc)


@register_loss("dppo_topk_kl", TopkKlHyper, "DPPO Top-K KL: mask by KL(mu||pi) over mu's top-k plus a rest bucket",
               needs_topk=True)
def dppo_topk_kl(x: LossInputs, h: TopkKlHyper):
    """D = sum_topk mu_i log(mu_i/pi_i) + rest bucket; m = 0 if D > delta and harmful.  w = m * min(r,C)/r."""
    _, kl = topk_divergences(x)
    return _masked_pg(x, ~((kl > h.delta) & _harmful(x)), h.trunc)
