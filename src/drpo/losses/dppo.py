"""DPPO (Qi et al. 2026, "Rethinking the Trust Region in LLM Reinforcement Learning"): divergence trust regions
as hard masks, Binary-TV, Binary-KL and Top-K TV / KL (docs/method.md, Eqs. 6-8).

A token is dropped only when it has crossed the divergence boundary in the direction its advantage pushes
it (pi > mu for A > 0, pi < mu for A < 0; mu is the anchor, pi_old with anchor="recompute"); a token moving
back towards mu is always kept. Kept tokens get the truncated-IS policy gradient, so every variant has

    J_t = m_t * sg(min(r_t, C) / r_t) * r_t * A_t  (of value m_t min(r_t, C) A_t),    w_t = m_t * min(r_t, C) / r_t,

with m_t its 0/1 mask, a constant of the update, and C = ``trunc`` (DPPO truncates the ratio where PPO would
dual-clip it). DPPO's code (and verl's dppo_tv / dppo_kl) writes the surrogate sg(min(r_t, C)) A_t log pi_t m_t,
whose gradient is the same and whose value is J_t times log pi_t. Each function returns (J_t, w_t) (the contract:
drpo.losses.wrapper).
"""

from __future__ import annotations

import math
from typing import Literal

import pydantic
import torch

from drpo.losses.inputs import LossInputs
from drpo.losses.registry import ConfigMap, Hyper, LabMethod, register_loss


class DppoHyper(Hyper):
    trunc: float | None = pydantic.Field(20.0, gt=1.0, description="truncate the IS ratio at C (None: no truncation)")


def _masked_pg(x: LossInputs, keep: torch.Tensor, trunc: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(J_t, w_t) = (m_t min(r_t, C) A_t, m_t min(r_t, C) / r_t), m_t = ``keep``: the truncated-IS objective and
    weight every DPPO variant shares. [B, T] each"""
    weight = keep.to(x.ratio.dtype)  # [B, T]
    ratio = x.ratio
    # min(r, C)/r differs from 1 only past C, which most batches never reach: one reduction instead of 4 passes
    if trunc is not None and x.ratio.max() > trunc:
        weight.mul_(x.ratio.reciprocal().mul_(trunc).clamp_(max=1))  # min(r, C) / r
        ratio = x.ratio.clamp(max=trunc)
    return (ratio * x.advantages).mul_(keep), weight


def _harmful(x: LossInputs) -> torch.Tensor:
    """Moved the way the advantage pushes: pi > mu for A > 0, pi < mu for A < 0. [B, T] bool"""
    return ((x.shift > 0) & x.pushed_up) | ((x.shift < 0) & x.pushed_down)


class BinaryTvHyper(DppoHyper):
    delta_low: float = pydantic.Field(0.15, gt=0.0, le=1.0, description="drop A<0 tokens with pi - mu < -delta_low")
    delta_high: float = pydantic.Field(0.15, gt=0.0, le=1.0, description="drop A>0 tokens with pi - mu > delta_high")


# verl's config schema is closed, so the Binary losses' hyper-parameters ride on its trust-region fields with the
# meaning verl's own dppo_tv / dppo_kl give them: clip_ratio* hold the width (a probability shift for TV, a KL for
# Binary-KL) and clip_ratio_c the importance-ratio truncation C
@register_loss(
    "dppo_binary_tv", BinaryTvHyper, "DPPO Binary-TV: drop tokens whose abs(pi-mu) crossed delta the harmful way",
    boundary=("delta_low", "delta_high"),
    verl=ConfigMap({"delta_low": "clip_ratio_low", "delta_high": "clip_ratio_high", "trunc": "clip_ratio_c"}, order=30),
    methods=(LabMethod("dppo_binary_tv", order=120),),
)
def dppo_binary_tv(x: LossInputs, h: BinaryTvHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """DPPO Binary-TV (docs/method.md, Eq. 6): a bound on the probability shift pi - mu.

    J_t = m_t sg(min(r_t, C) / r_t) r_t A_t,  m_t = 0 if (A_t > 0 and pi_t - mu_t > delta_high) or
    (A_t < 0 and pi_t - mu_t < -delta_low), else 1.
    w_t = m_t * min(r_t, C) / r_t.
    """
    # the bounds per advantage ([B, 1] or [B, T]); the side the advantage does not push is unbounded
    upper = torch.where(x.pushed_up, x.advantages.new_tensor(h.delta_high), math.inf)
    lower = torch.where(x.pushed_down, x.advantages.new_tensor(-h.delta_low), -math.inf)
    return _masked_pg(x, (x.shift <= upper).logical_and_(x.shift >= lower), h.trunc)


class BinaryKlHyper(DppoHyper):
    delta: float = pydantic.Field(0.05, gt=0.0, description="drop tokens with binary KL(mu || pi) > delta, harmful way")


@register_loss("dppo_binary_kl", BinaryKlHyper, "DPPO Binary-KL: drop tokens whose Bernoulli KL(mu||pi) crossed delta",
               verl=ConfigMap({"delta": "clip_ratio", "trunc": "clip_ratio_c"}, order=40),
               methods=(LabMethod("dppo_binary_kl", order=130),))
def dppo_binary_kl(x: LossInputs, h: BinaryKlHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """DPPO Binary-KL (docs/method.md, Eq. 7): a bound on the KL between Bernoulli(mu_t) and Bernoulli(pi_t).

    D_t = mu_t log(mu_t / pi_t) + (1 - mu_t) log((1 - mu_t) / (1 - pi_t)).
    J_t = m_t sg(min(r_t, C) / r_t) r_t A_t,  m_t = 0 if D_t > delta and pi_t moved the way A_t pushes
    (pi_t > mu_t for A_t > 0, pi_t < mu_t for A_t < 0), else 1.
    w_t = m_t * min(r_t, C) / r_t.
    """
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
    """TV and KL(mu || pi) over a partition of the vocabulary: mu's top-k tokens, the sampled token when
    it is not one of them, and one "rest" bucket for everything else.

    DPPO's partition is top-k plus rest (docs/method.md, Eq. 8). Giving a sampled token outside the top-k a bucket of its own
    refines it, and a divergence over a finer partition is never smaller (data processing), so the
    estimate is closer to the full-vocabulary divergence; it also makes the sampled token, whose gradient
    the mask decides, always count. "Outside" is decided by token ids (``x.response_ids``), never by
    comparing log-probs: two rollout sources can disagree on one token's log mu by 1e-7.

    pi comes from the logits: a gather minus a chunked log-sum-exp, so no second [B, T, V] tensor is
    materialised. The rest bucket is summed directly over the tokens outside the members, never as
    1 - sum(members), which cancels when the members hold nearly all the mass (pi_rest = 1e-8 becomes 0
    in float32); mu's rest, known only as 1 - sum(top-k), is taken in float64. Returns (tv, kl), each [B, T].
    """
    logits, ids, sampled = x.logits, x.rollout_topk_ids.long(), x.response_ids.long()  # [B, T, V], [B, T, K], [B, T]
    batch, length, vocab = logits.shape
    outside = (ids != sampled.unsqueeze(-1)).all(-1)  # [B, T]
    members = torch.cat([ids, sampled.unsqueeze(-1)], dim=-1)  # [B, T, K+1]; the last repeats a top-k id if inside
    log_z, log_rest = _chunked_log_masses(logits.reshape(batch * length, vocab), members.flatten(0, 1),
                                          x.log_prob.dtype)  # [N], [N]
    log_z, log_rest = log_z.view(batch, length).double(), log_rest.view(batch, length).double()  # [B, T]
    counted = torch.cat([torch.ones_like(ids, dtype=torch.bool), outside.unsqueeze(-1)], dim=-1)  # [B, T, K+1]
    log_pi = logits.gather(-1, members).double() - log_z.unsqueeze(-1)  # [B, T, K+1]
    log_mu = torch.cat([x.rollout_topk_log_probs, x.rollout_log_prob.unsqueeze(-1)], dim=-1).double()
    pi, mu = log_pi.exp() * counted, log_mu.exp() * counted  # [B, T, K+1], 0 for a sampled token inside
    mu_rest = (1 - mu.sum(-1)).clamp_(min=0)  # [B, T]
    log_pi_rest = log_rest - log_z  # [B, T]

    tv = 0.5 * ((mu - pi).abs().sum(-1) + (mu_rest - log_pi_rest.exp()).abs())
    kl = _kl_terms(mu, log_mu, log_pi).sum(-1) + _kl_terms(mu_rest, mu_rest.log(), log_pi_rest)
    return tv.to(x.log_prob.dtype), kl.to(x.log_prob.dtype)


def _chunked_log_masses(flat_logits: torch.Tensor, members: torch.Tensor,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(log sum over V, log sum over V minus ``members``) of [N, V] logits exponentiated; members [N, M].

    A chunk of rows at a time through one reused buffer: torch.logsumexp allocates per call, and with
    several threads the allocator then keeps far more than one chunk resident. An empty rest (every
    token a member, or all of it underflowing) gives the dtype's smallest log, not -inf.
    """
    num_rows, vocab = flat_logits.shape
    rows = max(1, TOPK_CHUNK_ELEMENTS // vocab)
    buffer = torch.empty(min(rows, num_rows), vocab, dtype=dtype, device=flat_logits.device)
    log_z = torch.empty(num_rows, dtype=dtype, device=flat_logits.device)  # [N]
    log_rest = torch.empty(num_rows, dtype=dtype, device=flat_logits.device)  # [N]
    for start in range(0, num_rows, rows):
        chunk = flat_logits[start:start + rows]
        work = buffer[: len(chunk)].copy_(chunk)  # [n, V], cast to the compute dtype
        peak = work.amax(-1)  # [n]
        work.sub_(peak.unsqueeze(-1)).exp_()
        log_z[start:start + rows] = work.sum(-1).log_().add_(peak)
        rest = work.scatter_(-1, members[start:start + rows], 0.0).sum(-1)  # [n]
        log_rest[start:start + rows] = rest.clamp_(min=torch.finfo(dtype).tiny).log_().add_(peak)
    return log_z, log_rest


def _kl_terms(mu: torch.Tensor, log_mu: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """mu * (log mu - log pi), with 0 log 0 = 0."""
    return torch.where(mu > 0, mu * (log_mu - log_pi), torch.zeros_like(mu))


@register_loss("dppo_topk_tv", TopkTvHyper, "DPPO Top-K TV: mask by TV over mu's top-k tokens plus a rest bucket",
               needs_topk=True, verl=ConfigMap(refused=(
                   "needs the rollout's top-k log-probs and the current logits; verl's policy-loss call passes "
                   "neither (its vLLM/SGLang rollout records only the sampled token's log-prob)")))
def dppo_topk_tv(x: LossInputs, h: TopkTvHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """DPPO Top-K TV (docs/method.md, Eq. 8): a bound on the total variation over mu's top-k tokens.

    D_t = 1/2 (sum_i |mu_i - pi_i| + |mu_rest - pi_rest|), i over mu's top-k tokens and the sampled token when
    it is not one of them, "rest" one bucket for every other token (``topk_divergences``).
    J_t = m_t sg(min(r_t, C) / r_t) r_t A_t,  m_t = 0 if D_t > delta and pi_t moved the way A_t pushes, else 1.
    w_t = m_t * min(r_t, C) / r_t.
    """
    tv, _ = topk_divergences(x)
    return _masked_pg(x, ~((tv > h.delta) & _harmful(x)), h.trunc)


@register_loss("dppo_topk_kl", TopkKlHyper, "DPPO Top-K KL: mask by KL(mu||pi) over mu's top-k plus a rest bucket",
               needs_topk=True, verl=ConfigMap(refused="same as dppo_topk_tv"))
def dppo_topk_kl(x: LossInputs, h: TopkKlHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """DPPO Top-K KL (docs/method.md, Eq. 8): a bound on KL(mu || pi) over mu's top-k tokens.

    D_t = sum_i mu_i log(mu_i / pi_i) + mu_rest log(mu_rest / pi_rest), over the buckets of ``dppo_topk_tv``.
    J_t = m_t sg(min(r_t, C) / r_t) r_t A_t,  m_t = 0 if D_t > delta and pi_t moved the way A_t pushes, else 1.
    w_t = m_t * min(r_t, C) / r_t.
    """
    _, kl = topk_divergences(x)
    return _masked_pg(x, ~((kl > h.delta) & _harmful(x)), h.trunc)
