"""The loss contract checked against independent truth: docs/method.md's formulas written out here by hand.

For every loss and random inputs, autograd's d(per_token)/d(log_prob) must equal -w * r * A, w must equal the
formula of docs/method.md computed below from pi, mu, A alone (never from drpo's internals), and per_token's
value must be -J, minus the method's objective written out below (drpo.losses.wrapper); both are also checked
by hand per loss.
"""

from __future__ import annotations

import math
import re
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drpo.losses import (
    AGGREGATIONS,
    ALIASES,
    LOSSES,
    PRESETS,
    aggregate,
    cannot_bind,
    get_loss,
    warn_if_cannot_bind,
)
from drpo.losses import dppo as dppo_module


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """Exact comparisons in float64 for this module only; other modules keep torch's default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_batch(seed: int, batch: int, length: int, max_log_ratio: float = 2.0, rare: bool = False):
    """Random rollout: mu in (0, 1), pi = mu * exp(log-ratio) kept < 1, advantages, ragged mask."""
    g = torch.Generator().manual_seed(seed)
    low = -18.0 if rare else -6.0
    log_mu = torch.empty(batch, length).uniform_(low, -0.05, generator=g)  # [B, T]
    log_ratio = torch.empty(batch, length).uniform_(-max_log_ratio, max_log_ratio, generator=g)
    log_pi = torch.minimum(log_mu + log_ratio, torch.full_like(log_mu, -1e-3))
    advantages = torch.randn(batch, generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).double()
    return log_pi, log_mu, advantages, mask


def rollout_correction(hyper, ref, mu, mask):
    """c(rho) of decoupled PPO, rho = pi_old / mu per token or per sequence (product, geometric mean)."""
    log_rho = torch.log(ref / mu) * mask
    if hyper.level != "token":
        log_rho = log_rho.sum(-1, keepdim=True)
        if hyper.level == "geometric":
            log_rho = log_rho / mask.sum(-1, keepdim=True)
    rho = torch.exp(log_rho).expand_as(ref)
    low = 0.0 if hyper.is_low is None else hyper.is_low
    high = math.inf if hyper.is_high is None else hyper.is_high
    if hyper.mode == "truncate":
        return torch.minimum(torch.maximum(rho, torch.full_like(rho, low)), torch.full_like(rho, high))
    return rho * ((rho >= low) & (rho <= high))


def sequence_ratio(log_pi, log_ref, mask):
    """GSPO's s_i = (prod_t pi_t / ref_t)^(1/|y_i|), broadcast over the response. [B, T]"""
    return torch.exp(((log_pi - log_ref) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)).expand_as(log_pi)


def gspo_clipped(hyper, s, adv):
    return ((adv > 0) & (s > 1 + hyper.eps_high)) | ((adv < 0) & (s < 1 - hyper.eps_low))


def expected_weight(name: str, hyper, pi, ref, adv, mu=None, mask=None):
    """docs/method.md's gradient-weight column from probabilities (ref: mu, or pi_old). Returns (w, ratio).

    The framework baselines need mu (decoupled_ppo's IS weight pi_old/mu) and the mask (sequence levels).
    """
    r = pi / ref
    s = torch.sign(adv * (r - 1))
    if name == "decoupled_ppo":
        return expected_weight("ppo_clip", hyper, pi, ref, adv)[0] * rollout_correction(hyper, ref, mu, mask), r
    if name == "gspo":  # d J / d log pi_t = m * s * A, so w = m * s / r
        seq = sequence_ratio(pi.log(), ref.log(), mask)
        return (~gspo_clipped(hyper, seq, adv)).double() * seq / r, r
    if name == "pg_is":
        return (torch.ones_like(r) if hyper.trunc is None else torch.clamp(r, max=hyper.trunc) / r), r
    if name == "ppo_clip":
        zero = ((adv > 0) & (r > 1 + hyper.eps_high)) | ((adv < 0) & (r < 1 - hyper.eps_low))
        if hyper.dual_clip is not None:
            zero |= (adv < 0) & (r > hyper.dual_clip)
        return (~zero).double(), r
    if name == "cispo":
        return torch.clamp(r, 1 - hyper.eps_low, 1 + hyper.eps_high) / r, r
    if name == "spo":
        return 1 - s * (r - 1).abs() / hyper.eps, r
    if name == "drpo":
        return 1 - s * (pi - ref).abs() / hyper.delta, r
    if name == "drpo_clipped":  # DRPO's weight capped at 1: no amplification of tokens moving back
        return torch.clamp(1 - s * (pi - ref).abs() / hyper.delta, max=1.0), r
    trunc = 1.0 if hyper.trunc is None else torch.clamp(r, max=hyper.trunc) / r
    if name == "dppo_binary_tv":
        drop = ((adv > 0) & (pi - ref > hyper.delta_high)) | ((adv < 0) & (pi - ref < -hyper.delta_low))
        return (~drop).double() * trunc, r
    if name == "dppo_binary_kl":
        kl = ref * torch.log(ref / pi) + (1 - ref) * torch.log((1 - ref) / (1 - pi))
        harmful = ((adv > 0) & (pi > ref)) | ((adv < 0) & (pi < ref))
        return (~((kl > hyper.delta) & harmful)).double() * trunc, r
    raise AssertionError(name)


DENSE = sorted(name for name, spec in LOSSES.items() if not spec.needs_topk)


def reference_objective(name: str, hyper, log_pi, log_ref, adv, log_mu=None, mask=None):
    """docs/method.md's objective column in plain autograd-able torch; .detach() is the paper's sg()."""
    pi, ref = log_pi.exp(), log_ref.exp()
    r = pi / ref
    r_sg = r.detach()
    if name == "decoupled_ppo":  # the IS weight is a constant of the update
        rho = rollout_correction(hyper, ref, log_mu.exp(), mask)
        return rho * reference_objective("ppo_clip", hyper, log_pi, log_ref, adv)
    if name == "gspo":  # GSPO's sequence objective J_i on every token of response i; s carries the gradient
        seq = sequence_ratio(log_pi, log_ref, mask)
        return torch.minimum(seq * adv, torch.clamp(seq, 1 - hyper.eps_low, 1 + hyper.eps_high) * adv)
    if name == "drpo":
        return r * adv - adv.abs() * ref / (2 * hyper.delta) * (r - 1) ** 2
    if name == "drpo_clipped":  # the penalty on the side the advantage pushes towards only
        return r * adv - adv.abs() * ref / (2 * hyper.delta) * torch.clamp(torch.sign(adv) * (r - 1), min=0) ** 2
    if name == "spo":
        return r * adv - adv.abs() / (2 * hyper.eps) * (r - 1) ** 2
    if name == "ppo_clip":
        objective = torch.minimum(r * adv, torch.clamp(r, 1 - hyper.eps_low, 1 + hyper.eps_high) * adv)
        if hyper.dual_clip is not None:
            objective = torch.where(adv < 0, torch.maximum(objective, hyper.dual_clip * adv), objective)
        return objective
    if name == "cispo":
        return torch.clamp(r_sg, 1 - hyper.eps_low, 1 + hyper.eps_high) * adv * log_pi
    truncation = 1.0 if hyper.trunc is None else torch.clamp(r_sg, max=hyper.trunc) / r_sg  # sg(min(r, C) / r)
    if name == "pg_is":
        return truncation * r * adv
    weight, _ = expected_weight(name, hyper, pi.detach(), ref, adv)
    return truncation * r * adv * (weight > 0)  # the mask m, a constant of the update


HYPERS = {"ppo_clip": [{}, {"eps_high": 0.28, "dual_clip": 3.0}], "pg_is": [{}, {"trunc": 2.0}],
          "dppo_binary_tv": [{}, {"trunc": None, "delta_low": 0.05}], "dppo_binary_kl": [{}, {"trunc": 1.5}],
          "drpo": [{}, {"delta": 12.5}], "drpo_clipped": [{}, {"delta": 0.05}],
          # every level and mode, with bounds the test's pi_old/mu (a spread of ~0.1 in log) crosses
          "decoupled_ppo": [{}, {"mode": "mask", "is_low": 0.9, "is_high": 1.1, "dual_clip": 3.0},
                            {"level": "sequence", "mode": "mask", "is_low": 0.8, "is_high": 1.25},
                            {"level": "sequence", "is_low": 0.9, "is_high": None},
                            {"level": "geometric", "mode": "truncate", "is_low": 0.95, "is_high": 1.05}],
          "gspo": [{}, {"eps_low": 0.2, "eps_high": 0.28}]}


def anchors(name: str) -> tuple[str, ...]:
    """The anchors a loss accepts (decoupled PPO clips on pi_old only)."""
    return typing.get_args(LOSSES[name].hyper.model_fields["anchor"].annotation)


CASES = [(name, hyper, anchor) for name in DENSE for hyper in HYPERS.get(name, [{}]) for anchor in anchors(name)]


def contract_case(name, hyper, anchor, seed, batch, length, rare, dtype=torch.float64):
    """(out, autograd grad, expected w, expected r, reference objective's grad, advantages, mask); the
    expected values come from float64 probabilities whatever ``dtype`` the loss runs in."""
    log_pi, log_mu, adv, mask = make_batch(seed, batch, length, rare=rare)
    old = log_mu + 0.1 * torch.randn(log_mu.shape, generator=torch.Generator().manual_seed(seed + 1))
    old = torch.minimum(old, torch.full_like(old, -1e-3))
    loss = get_loss(name, anchor=anchor, **hyper)
    log_prob = log_pi.to(dtype).requires_grad_()
    out = loss(log_prob=log_prob, rollout_log_prob=log_mu.to(dtype), advantages=adv.to(dtype), response_mask=mask,
               old_log_prob=old.to(dtype))
    (grad,) = torch.autograd.grad(out.per_token.sum(), log_prob)

    log_ref = old if anchor == "recompute" else log_mu
    adv_bt = adv[:, None].expand_as(log_pi)
    weight, ratio = expected_weight(name, loss.hyper, log_pi.exp(), log_ref.exp(), adv_bt, log_mu.exp(), mask)
    reference_log_pi = log_pi.clone().requires_grad_()
    reference = reference_objective(name, loss.hyper, reference_log_pi, log_ref, adv_bt, log_mu, mask)
    (reference_grad,) = torch.autograd.grad(-(reference * mask).sum(), reference_log_pi)
    return out, grad, weight, ratio, reference, reference_grad, adv_bt, mask


@pytest.mark.parametrize(("name", "hyper", "anchor"), CASES)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5), length=st.integers(1, 9), rare=st.booleans())
def test_gradient_equals_weight_times_ratio_times_advantage(name, hyper, anchor, seed, batch, length, rare):
    out, grad, weight, ratio, reference, reference_grad, adv_bt, mask = contract_case(
        name, hyper, anchor, seed, batch, length, rare)

    valid = mask.bool()
    torch.testing.assert_close(out.weight[valid], weight[valid], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.ratio[valid], ratio[valid], rtol=1e-9, atol=0)
    torch.testing.assert_close(out.per_token, -(reference * mask).detach(), rtol=1e-9, atol=1e-9)  # -J
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad[valid], (-weight * ratio * adv_bt)[valid], rtol=1e-9, atol=1e-9)
    assert (grad[~valid] == 0).all() and (out.per_token[~valid] == 0).all() and (out.weight[~valid] == 0).all()


@pytest.mark.parametrize(("name", "hyper", "anchor"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_contract_holds_in_float32(name, hyper, anchor, seed):
    """The same contract with float32 tensors, against the float64 truth to float32's precision."""
    out, grad, weight, ratio, _, reference_grad, adv_bt, mask = contract_case(
        name, hyper, anchor, seed, batch=4, length=7, rare=False, dtype=torch.float32)
    valid = mask.bool()
    assert out.weight.dtype == torch.float32
    torch.testing.assert_close(out.weight[valid].double(), weight[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad.double(), reference_grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad[valid].double(), (-weight * ratio * adv_bt)[valid], rtol=1e-4, atol=1e-5)


# --- Top-K -------------------------------------------------------------------------------------------

def topk_case(seed: int, batch=3, length=5, vocab=13, k=3, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    mu_logits = torch.randn(batch, length, vocab, generator=g) * 2
    logits = mu_logits + spread * torch.randn(batch, length, vocab, generator=g)
    log_mu_all = mu_logits.log_softmax(-1)
    sampled = torch.multinomial(log_mu_all.exp().view(-1, vocab), 1, generator=g).view(batch, length)
    topk_log_probs, topk_ids = log_mu_all.topk(k, dim=-1)
    log_pi_all = logits.log_softmax(-1)
    log_pi = log_pi_all.gather(-1, sampled[..., None])[..., 0]
    log_mu = log_mu_all.gather(-1, sampled[..., None])[..., 0]
    adv = torch.randn(batch, generator=g)
    return logits, log_pi_all, log_mu_all, sampled, topk_ids, topk_log_probs, log_pi, log_mu, adv


def naive_topk_divergence(log_pi_all, log_mu_all, sampled, topk_ids):
    """Set S = top-k(mu) plus the sampled token; TV and KL over S and one 'rest' bucket, by loops."""
    batch, length, _ = log_pi_all.shape
    tv, kl = torch.zeros(batch, length), torch.zeros(batch, length)
    for b in range(batch):
        for t in range(length):
            members = set(topk_ids[b, t].tolist()) | {int(sampled[b, t])}
            pi = [log_pi_all[b, t, i].exp().item() for i in members]
            mu = [log_mu_all[b, t, i].exp().item() for i in members]
            pi_rest, mu_rest = max(0.0, 1 - sum(pi)), max(0.0, 1 - sum(mu))
            tv[b, t] = 0.5 * (sum(abs(m - p) for m, p in zip(mu, pi, strict=True)) + abs(mu_rest - pi_rest))
            kl[b, t] = sum(m * math.log(m / p) for m, p in zip(mu, pi, strict=True) if m > 0)
            kl[b, t] += mu_rest * math.log(mu_rest / pi_rest) if mu_rest > 0 else 0.0
    return tv, kl


@pytest.mark.parametrize("name", ["dppo_topk_tv", "dppo_topk_kl"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spread=st.floats(0.0, 3.0))
def test_topk_mask_and_gradient(name, seed, spread):
    logits, log_pi_all, log_mu_all, sampled, ids, topk_lp, log_pi, log_mu, adv = topk_case(seed, spread=spread)
    tv, kl = naive_topk_divergence(log_pi_all, log_mu_all, sampled, ids)
    loss = get_loss(name)
    divergence = tv if name.endswith("tv") else kl
    pi, mu, adv_bt = log_pi.exp(), log_mu.exp(), adv[:, None].expand_as(log_pi)
    harmful = ((adv_bt > 0) & (pi > mu)) | ((adv_bt < 0) & (pi < mu))
    r = pi / mu
    weight = (~((divergence > loss.hyper.delta) & harmful)).double() * torch.clamp(r, max=loss.hyper.trunc) / r

    log_prob = log_pi.clone().requires_grad_()
    out = loss(log_prob=log_prob, rollout_log_prob=log_mu, advantages=adv, response_mask=torch.ones_like(log_pi),
               rollout_topk_ids=ids, rollout_topk_log_probs=topk_lp, logits=logits, response_ids=sampled)
    (grad,) = torch.autograd.grad(out.per_token.sum(), log_prob)
    torch.testing.assert_close(out.weight, weight)
    torch.testing.assert_close(grad, -weight * r * adv_bt)


def test_topk_divergence_is_exact_and_chunk_independent(monkeypatch):
    logits, log_pi_all, log_mu_all, sampled, ids, topk_lp, log_pi, log_mu, adv = topk_case(3, batch=4, length=6)
    tv_ref, kl_ref = naive_topk_divergence(log_pi_all, log_mu_all, sampled, ids)
    loss = get_loss("dppo_topk_tv")
    x = loss.inputs(log_pi, log_mu, adv, torch.ones_like(log_pi), None, ids, topk_lp, logits, sampled)
    for chunk_elements in (dppo_module.TOPK_CHUNK_ELEMENTS, 13, 1):
        monkeypatch.setattr(dppo_module, "TOPK_CHUNK_ELEMENTS", chunk_elements)
        tv, kl = dppo_module.topk_divergences(x)
        torch.testing.assert_close(tv, tv_ref)
        torch.testing.assert_close(kl, kl_ref)
    outside = ~(ids == sampled[..., None]).any(-1)
    assert outside.any() and (~outside).any(), "the case must exercise both branches of the sampled token"


# --- hand-computed boundary cases --------------------------------------------------------------------

def one_token(loss, pi: float, mu: float, adv: float):
    log_prob = torch.tensor([[math.log(pi)]], requires_grad=True)
    out = loss(log_prob=log_prob, rollout_log_prob=torch.tensor([[math.log(mu)]]),
               advantages=torch.tensor([adv]), response_mask=torch.ones(1, 1))
    (grad,) = torch.autograd.grad(out.per_token.sum(), log_prob)
    return out.weight.item(), out.per_token.item(), grad.item()


def test_drpo_weight_crosses_zero_on_the_tv_boundary():
    loss = get_loss("drpo", delta=0.15)
    assert one_token(loss, 0.65, 0.5, +1.0)[0] == pytest.approx(0.0, abs=1e-12)  # diverging, A>0, at boundary
    assert one_token(loss, 0.35, 0.5, -1.0)[0] == pytest.approx(0.0, abs=1e-12)  # diverging, A<0, at boundary
    w_beyond, _, grad_beyond = one_token(loss, 0.8, 0.5, +1.0)
    assert w_beyond == pytest.approx(1 - 0.3 / 0.15) and w_beyond < 0
    assert grad_beyond > 0, "past the boundary the loss gradient pulls log pi back down"
    assert one_token(loss, 0.2, 0.5, -1.0)[0] == pytest.approx(-1.0)
    assert one_token(loss, 0.4, 0.5, +1.0)[0] == pytest.approx(1 + 0.1 / 0.15)  # converging: above 1
    assert one_token(loss, 0.6, 0.5, -1.0)[0] == pytest.approx(1 + 0.1 / 0.15)
    assert one_token(loss, 0.5, 0.5, 2.0)[0] == pytest.approx(1.0)


def test_drpo_clipped_caps_only_the_amplified_side():
    """Hand values at mu = 0.5, delta = 0.15: DRPO gives 1 + 0.1/0.15 to a token moving back, drpo_clipped 1."""
    loss = get_loss("drpo_clipped", delta=0.15)
    assert one_token(loss, 0.4, 0.5, +1.0)[0] == 1.0  # converging: DRPO's 1.667 capped
    assert one_token(loss, 0.6, 0.5, -1.0)[0] == 1.0
    assert one_token(loss, 0.55, 0.5, +1.0)[0] == pytest.approx(1 - 0.05 / 0.15)  # diverging inside: DRPO's
    assert one_token(loss, 0.65, 0.5, +1.0)[0] == 0.0  # on the boundary
    w, _, grad = one_token(loss, 0.8, 0.5, +1.0)  # past it: DRPO's pull back, -1
    assert w == pytest.approx(-1.0) and grad > 0
    # converging, the objective is r*A with no penalty: loss -0.8, gradient -r*A = -0.8
    _, per_token, grad = one_token(loss, 0.4, 0.5, +1.0)
    assert per_token == pytest.approx(-0.8) and grad == pytest.approx(-0.8)


def test_drpo_weight_is_bounded_for_rare_tokens_where_spo_is_not():
    # mu = 1e-6 and a shift of 1e-4: ratio ~ 101; SPO's weight explodes, DRPO's hardly moves.
    w_drpo = one_token(get_loss("drpo", delta=0.15), 1.01e-4, 1e-6, 1.0)[0]
    w_spo = one_token(get_loss("spo", eps=0.2), 1.01e-4, 1e-6, 1.0)[0]
    assert w_drpo == pytest.approx(1 - 1e-4 / 0.15)
    assert w_spo == pytest.approx(1 - 100 / 0.2)


def test_dppo_masks_only_the_harmful_direction():
    for name, hyper in (("dppo_binary_tv", {}), ("dppo_binary_kl", {})):
        loss = get_loss(name, **hyper)
        assert one_token(loss, 0.8, 0.5, +1.0)[0] == 0  # pushed up past the boundary: dropped
        assert one_token(loss, 0.2, 0.5, -1.0)[0] == 0  # pushed down past the boundary: dropped
        assert one_token(loss, 0.2, 0.5, +1.0)[0] == 1  # far, but moving back: kept
        assert one_token(loss, 0.8, 0.5, -1.0)[0] == 1
        assert one_token(loss, 0.55, 0.5, +1.0)[0] == 1  # inside the boundary


def test_dppo_truncates_the_ratio():
    w, per_token, grad = one_token(get_loss("dppo_binary_tv", trunc=2.0), 0.05, 0.01, 1.0)  # r = 5, shift 0.04
    assert w == pytest.approx(2 / 5) and grad == pytest.approx(-2.0)


def test_ppo_clip_both_sides_and_dual_clip():
    loss = get_loss("ppo_clip", eps_low=0.2, eps_high=0.28)
    assert one_token(loss, 0.65, 0.5, +1.0)[0] == 0  # r = 1.3 > 1.28
    assert one_token(loss, 0.63, 0.5, +1.0)[0] == 1  # r = 1.26
    assert one_token(loss, 0.25, 0.5, +1.0)[0] == 1  # r = 0.5, A>0: still pushed up
    assert one_token(loss, 0.35, 0.5, -1.0)[0] == 0  # r = 0.7 < 0.8
    assert one_token(loss, 0.9, 0.5, -1.0)[0] == 1  # r = 1.8, A<0: still pushed down
    dual = get_loss("ppo_clip", dual_clip=3.0)
    w, per_token, grad = one_token(dual, 0.8, 0.2, -1.0)  # r = 4 > c
    assert w == 0 and grad == 0 and per_token == pytest.approx(3.0)  # loss = -c*A
    assert one_token(dual, 0.5, 0.2, -1.0)[0] == 1  # r = 2.5 < c


def test_cispo_never_drops_a_token():
    loss = get_loss("cispo")
    for pi, mu, adv in ((0.9, 0.01, 1.0), (0.001, 0.9, -1.0), (0.9, 0.01, -1.0), (0.5, 0.5, 1.0)):
        w, _, grad = one_token(loss, pi, mu, adv)
        assert w > 0 and grad != 0
    assert one_token(loss, 0.9, 0.01, 1.0)[0] == pytest.approx(1.28 / 90)


def test_presets_and_aliases():
    assert get_loss("drpo_reference").hyper.delta == 12.5
    assert get_loss("minirl").hyper.anchor == "recompute" and get_loss("minirl").name == "decoupled_ppo"
    assert get_loss("ppo_clip_recompute").hyper.anchor == "recompute"
    assert get_loss("grpo").name == "ppo_clip"
    assert get_loss("drpo_reference", delta=1.0).hyper.delta == 1.0
    assert set(PRESETS) | set(ALIASES) | set(LOSSES) >= {
        "pg_is", "ppo_clip", "grpo", "cispo", "spo", "dppo_binary_tv", "dppo_binary_kl", "dppo_topk_tv",
        "dppo_topk_kl", "drpo", "decoupled_ppo", "gspo", "ppo_tis", "ppo_mis", "ppo_seq_tis", "ppo_seq_mis",
        "ppo_geo_mis", "minirl", "ppo_clip_recompute"}


def test_decoupled_ppo_by_hand():
    """pi_old/mu = 3 on a token whose r = pi/pi_old = 1.1 (inside the clip): TIS gives w = min(3, 2) = 2, the
    IcePop mask [0.5, 5] keeps w = 3, [0.5, 2] drops it; PPO's clip still zeroes a token with r = 1.5, A > 0."""
    mu, old = 0.1, 0.3

    def token(name, pi, adv=1.0, **hyper):
        log = torch.tensor([[math.log(pi)]], requires_grad=True)
        out = get_loss(name, **hyper)(log_prob=log, rollout_log_prob=torch.tensor([[math.log(mu)]]),
                                      old_log_prob=torch.tensor([[math.log(old)]]), advantages=torch.tensor([adv]),
                                      response_mask=torch.ones(1, 1))
        (grad,) = torch.autograd.grad(out.per_token.sum(), log)
        return out.weight.item(), grad.item()

    assert token("ppo_tis", 0.33) == pytest.approx((2.0, -2.0 * 1.1))  # grad = -w r A
    assert token("ppo_mis", 0.33) == pytest.approx((3.0, -3.0 * 1.1))
    assert token("ppo_mis", 0.33, is_high=2.0)[0] == 0
    assert token("ppo_tis", 0.45) == (0.0, 0.0)  # r = 1.5 > 1.2, A > 0: clipped
    assert token("minirl", 0.33)[0] == pytest.approx(3.0)  # MiniRL's weight is not truncated
    assert token("ppo_clip_recompute", 0.33)[0] == 1.0  # no correction for mu at all


def test_sequence_weights_by_hand():
    """Two tokens with pi_old/mu = 2 and 1.5 and a padded third: product 3, geometric mean sqrt(3) = 1.732."""
    log_mu = torch.log(torch.tensor([[0.2, 0.4, 0.5]]))
    log_old = torch.log(torch.tensor([[0.4, 0.6, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])

    def weights(name, **hyper):
        return get_loss(name, **hyper)(log_prob=log_old, rollout_log_prob=log_mu, old_log_prob=log_old,
                                       advantages=torch.tensor([1.0]), response_mask=mask).weight[0].tolist()

    assert weights("ppo_seq_tis") == pytest.approx([2.0, 2.0, 0.0])  # 3 truncated at 2
    assert weights("ppo_seq_tis", is_high=4.0) == pytest.approx([3.0, 3.0, 0.0])
    assert weights("ppo_seq_mis") == [0.0, 0.0, 0.0]  # 3 outside [0.5, 2]: the sequence is rejected
    assert weights("decoupled_ppo", level="geometric", mode="mask", is_low=0.5, is_high=2.0) == pytest.approx(
        [3 ** 0.5, 3 ** 0.5, 0.0])
    assert weights("ppo_geo_mis") == [0.0, 0.0, 0.0]  # 1.732 is far outside [0.999, 1.001]


def test_gspo_by_hand():
    """pi/pi_old = 1.0002 and 1.0008 on two tokens: s = sqrt(1.0002 * 1.0008) = 1.0005 > 1 + 4e-4, so A > 0
    is clipped (w = 0) and A < 0 is not: w_t = s / r_t, gradient s * A on every token of the sequence."""
    log_old = torch.log(torch.tensor([[0.5, 0.25]]))
    ratios = torch.tensor([[1.0002, 1.0008]])
    log_pi = log_old + ratios.log()
    s = math.sqrt(1.0002 * 1.0008)
    for adv, expected in ((1.0, [0.0, 0.0]), (-1.0, [s / 1.0002, s / 1.0008])):
        log = log_pi.clone().requires_grad_()
        out = get_loss("gspo")(log_prob=log, rollout_log_prob=log_old, old_log_prob=log_old,
                               advantages=torch.tensor([adv]), response_mask=torch.ones(1, 2))
        (grad,) = torch.autograd.grad(out.per_token.sum(), log)
        assert out.weight[0].tolist() == pytest.approx(expected, rel=1e-9)
        assert grad[0].tolist() == pytest.approx([-w * r * adv for w, r in zip(expected, [1.0002, 1.0008], strict=True)], rel=1e-9)
        # the per-token loss is the sequence's objective on every token: -min(s A, clip(s) A)
        assert out.per_token[0].tolist() == pytest.approx([-min(s * adv, min(s, 1.0004) * adv)] * 2, rel=1e-9)


# --- the per-token loss's value (and so loss/value): minus the method's objective, for every loss -----

# One response, A = +1, three tokens and a padded fourth. mu = (0.5, 0.5, 0.1), pi = (0.4, 0.7, 0.115), so
# r = pi/mu = (0.8, 1.4, 1.15) and pi - mu = (-0.1, 0.2, 0.015); pi_old = (0.4, 0.6, 0.25) for the losses
# anchored on it: r = pi/pi_old = (1, 7/6, 0.46), rho = pi_old/mu = (0.8, 1.2, 2.5). Top-k: a vocabulary of
# 3, mu's top-2 {0, 1}; the sampled token is 0, 0, 2 (outside the top-2: a bucket of its own).
VALUE_CASE = dict(
    mu=[[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.5, 0.3, 0.2]],  # per position, over the vocabulary
    pi=[[0.4, 0.35, 0.25], [0.7, 0.2, 0.1], [0.575, 0.31, 0.115], [0.4, 0.35, 0.25]],
    sampled=[0, 0, 2, 0], old=[0.4, 0.6, 0.25, 0.4])
S = (1.0 * (0.7 / 0.6) * 0.46) ** (1 / 3)  # GSPO's s: the geometric mean of r over the three valid tokens
DROPPED = [-0.8, 0.0, -1.15]  # a DPPO mask dropping the second token: J = m r A, and the gradient -m r A alike
# (hyper-parameters, the per-token loss -J by hand, its gradient -w r A by hand) on the three valid tokens
HAND_VALUES = {
    "pg_is": ({}, [-0.8, -1.4, -1.15], [-0.8, -1.4, -1.15]),  # J = r A, w = 1
    # r = 1.4 > 1.2 with A > 0: clipped, J = 1.2 A a constant
    "ppo_clip": ({}, [-0.8, -1.2, -1.15], [-0.8, 0.0, -1.15]),
    # J = sg(clip(r, 0, 1.28)) A log pi, w r = clip(r, 0, 1.28)
    "cispo": ({}, [-0.8 * math.log(0.4), -1.28 * math.log(0.7), -1.15 * math.log(0.115)], [-0.8, -1.28, -1.15]),
    # J = r A - (r - 1)^2 / (2 eps), w = 1 - (r - 1) / eps
    "spo": ({"eps": 0.2}, [-(0.8 - 0.04 / 0.4), -(1.4 - 0.16 / 0.4), -(1.15 - 0.0225 / 0.4)],
            [-2 * 0.8, -(1 - 0.4 / 0.2) * 1.4, -(1 - 0.15 / 0.2) * 1.15]),
    # J = r A - (pi - mu)^2 / (2 delta mu), w = 1 - (pi - mu) / delta
    "drpo": ({"delta": 0.3}, [-(0.8 - 0.01 / 0.3), -(1.4 - 0.04 / 0.3), -(1.15 - 0.015 ** 2 / 0.06)],
             [-(1 + 0.1 / 0.3) * 0.8, -(1 - 0.2 / 0.3) * 1.4, -(1 - 0.015 / 0.3) * 1.15]),
    # the first token moves back towards mu: no penalty, w = 1
    "drpo_clipped": ({"delta": 0.3}, [-0.8, -(1.4 - 0.04 / 0.3), -(1.15 - 0.015 ** 2 / 0.06)],
                     [-0.8, -(1 - 0.2 / 0.3) * 1.4, -(1 - 0.015 / 0.3) * 1.15]),
    "dppo_binary_tv": ({}, DROPPED, DROPPED),  # pi - mu = 0.2 > 0.15 with A > 0: dropped
    # D = 0.5 log(0.5/0.7) + 0.5 log(0.5/0.3) = 0.087 > 0.05: dropped; the third token's D is 0.0012
    "dppo_binary_kl": ({}, DROPPED, DROPPED),
    # TV 0.5 (0.2 + 0.1 + 0.1) = 0.2 > 0.15 at the second position: dropped; 0.025 at the third (buckets 0, 1, 2)
    "dppo_topk_tv": ({}, DROPPED, DROPPED),
    # KL 0.5 log(5/7) + 0.3 log(3/2) + 0.2 log 2 = 0.092 > 0.05: dropped; 0.0017 at the third
    "dppo_topk_kl": ({}, DROPPED, DROPPED),
    # anchored on pi_old, inside PPO's clip: J = rho r A with rho truncated at 2, w = rho: rho r = pi/mu where rho < 2
    "decoupled_ppo": ({}, [-0.8, -1.4, -2 * 0.46], [-0.8, -1.4, -2 * 0.46]),
    # J_t = min(s A, clip(s) A) = s A on every token (A > 0, s < 1: not clipped), w_t r_t = s
    "gspo": ({}, [-S, -S, -S], [-S, -S, -S]),
}


def test_every_registered_loss_has_a_hand_computed_value():
    assert set(HAND_VALUES) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(HAND_VALUES))
def test_per_token_value_is_minus_the_objective(name):
    """The value every loss reports, checked by hand: -J per token (the published method's objective), 0 on
    padding, its token mean the trainer's loss/value (token-mean aggregation); its gradient -w r A."""
    hyper, expected, expected_grad = HAND_VALUES[name]
    case = VALUE_CASE
    pi_all, mu_all = torch.tensor(case["pi"]), torch.tensor(case["mu"])  # [T, V]
    sampled = torch.tensor(case["sampled"])
    log_prob = pi_all.gather(-1, sampled[:, None]).log().T.clone().requires_grad_()  # [1, T]
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    extra = {}
    if LOSSES[name].needs_topk:
        topk_log_probs, topk_ids = mu_all.log().topk(2, dim=-1)
        extra = dict(rollout_topk_ids=topk_ids[None], rollout_topk_log_probs=topk_log_probs[None],
                     logits=pi_all.log()[None], response_ids=sampled[None])
    out = get_loss(name, **hyper)(
        log_prob=log_prob, rollout_log_prob=mu_all.gather(-1, sampled[:, None]).log().T,
        old_log_prob=torch.tensor([case["old"]]).log(), advantages=torch.tensor([1.0]), response_mask=mask, **extra)

    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[*expected, 0.0]]), rtol=1e-9, atol=1e-12)
    assert aggregate(out.per_token, mask).item() == pytest.approx(sum(expected) / 3, rel=1e-9)
    (grad,) = torch.autograd.grad(out.per_token.sum(), log_prob)
    torch.testing.assert_close(grad, torch.tensor([[*expected_grad, 0.0]]), rtol=1e-9, atol=1e-12)


# --- aggregation ------------------------------------------------------------------------------------

def test_aggregation_modes_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # valid tokens: seq0 = 1,2,3 (sum 6, mean 2), seq1 = 4; seq2 has none and is left out
    assert aggregate(per_token, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(per_token, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(per_token, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(per_token, mask, "seq-mean-token-sum-norm", horizon=8).item() == pytest.approx((6 + 4) / 2 / 8)
    assert set(AGGREGATIONS) == {"token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"}


def test_aggregation_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-sum"):
        aggregate(x, x, "mean")
    with pytest.raises(ValueError, match="fixed horizon"):
        aggregate(x, x, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        aggregate(x, torch.zeros(3, 2))


# --- errors and extremes ----------------------------------------------------------------------------

def call(loss, **overrides):
    log_pi, log_mu, adv, mask = make_batch(0, 2, 4)
    kwargs = dict(log_prob=log_pi, rollout_log_prob=log_mu, advantages=adv, response_mask=mask)
    kwargs.update(overrides)
    return loss(**kwargs)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown loss 'drp'.*drpo"):
        get_loss("drp")
    with pytest.raises(ValueError, match="unknown key 'eps'.*delta"):
        get_loss("drpo", eps=0.2)
    with pytest.raises(ValueError, match="'delta' got -0.1.*greater than 0"):
        get_loss("drpo", delta=-0.1)
    with pytest.raises(ValueError, match="'anchor' got 'mu'"):
        get_loss("ppo_clip", anchor="mu")
    with pytest.raises(ValueError, match="'anchor' got 'recompute'"):
        get_loss("dppo_topk_tv", anchor="recompute")
    loss = get_loss("drpo")
    with pytest.raises(ValueError, match=r"rollout_log_prob has shape \(2, 3\) but log_prob has \(2, 4\)"):
        call(loss, rollout_log_prob=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="rollout_log_prob is torch.float32 but log_prob is torch.float64"):
        call(loss, rollout_log_prob=torch.zeros(2, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="advantages has shape"):
        call(loss, advantages=torch.zeros(3))
    with pytest.raises(ValueError, match=r"log_prob has 1 non-finite"):
        call(loss, log_prob=torch.tensor([[-1.0, float("nan"), -1.0, -1.0], [-1.0] * 4]))
    with pytest.raises(ValueError, match=r"advantages has 1 non-finite"):
        call(loss, advantages=torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="must be log-probabilities"):
        call(loss, log_prob=torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="needs old_log_prob"):
        call(get_loss("drpo", anchor="recompute"))
    with pytest.raises(ValueError, match="needs rollout_topk_ids, rollout_topk_log_probs, logits"):
        call(get_loss("dppo_topk_kl"))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_inputs_stay_finite(name, dtype):
    """float16 is left out on purpose: a true gradient of r * A ~ 1e8 does not fit in its range."""
    # log pi - log mu of +50 and -50, mu = 1e-8, and an ordinary token
    log_mu = torch.tensor([[-55.0, -1e-9, math.log(1e-8), -3.0]])
    log_pi = torch.tensor([[-5.0, -50.0, math.log(0.5), -3.0]])
    extra = {}
    if LOSSES[name].needs_topk:
        extra = dict(rollout_topk_ids=torch.zeros(1, 4, 2, dtype=torch.long),
                     rollout_topk_log_probs=torch.full((1, 4, 2), -0.7, dtype=dtype),
                     logits=torch.randn(1, 4, 5, dtype=dtype) * 40, response_ids=torch.tensor([[0, 1, 2, 3]]))
    log_prob = log_pi.to(dtype).requires_grad_()
    out = get_loss(name)(log_prob=log_prob, rollout_log_prob=log_mu.to(dtype), old_log_prob=log_pi.to(dtype).flip(-1),
                         advantages=torch.tensor([5.0], dtype=dtype), response_mask=torch.ones(1, 4), **extra)
    aggregate(out.per_token, torch.ones(1, 4)).backward()
    assert torch.isfinite(out.per_token).all() and torch.isfinite(log_prob.grad.float()).all()
    assert all(math.isfinite(v) for v in out.metrics.values())


def test_metrics_count_masked_and_corrective_tokens():
    loss = get_loss("drpo", delta=0.15)
    log_mu = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    log_pi = torch.log(torch.tensor([[0.9, 0.5, 0.6, 0.1]]))
    out = loss(log_prob=log_pi, rollout_log_prob=log_mu, advantages=torch.tensor([1.0]),
               response_mask=torch.tensor([[1, 1, 1, 0]]))
    m = out.metrics
    assert m["loss/corrective_frac"] == pytest.approx(1 / 3)  # only pi = 0.9 is past the boundary
    assert m["loss/masked_frac"] == 0
    assert m["shift/abs_max"] == pytest.approx(0.4) and m["shift/abs_mean"] == pytest.approx(0.5 / 3)
    assert m["ratio/max"] == pytest.approx(1.8)
    # w = 1 - 0.4/0.15, 1, 1 - 0.1/0.15 (pi = 0.1 is padding): nothing above 1; mean |w - 1| = (2.667 + 0 + 0.667)/3
    assert m["loss/amplified_frac"] == 0
    assert m["loss/weight_dev"] == pytest.approx((0.4 / 0.15 + 0.1 / 0.15) / 3)
    assert m["loss/weight_max"] == pytest.approx(1.0) and m["loss/weight_min"] == pytest.approx(1 - 0.4 / 0.15)
    back = loss(log_prob=log_pi, rollout_log_prob=log_mu, advantages=torch.tensor([-1.0]),
                response_mask=torch.tensor([[1, 1, 1, 0]]))  # A < 0: pi = 0.9 and 0.6 moved back up, w > 1
    assert back.metrics["loss/amplified_frac"] == pytest.approx(2 / 3)
    assert back.metrics["loss/weight_max"] == pytest.approx(1 + 0.4 / 0.15)
    tv = get_loss("dppo_binary_tv")(log_prob=log_pi, rollout_log_prob=log_mu, advantages=torch.tensor([1.0]),
                                    response_mask=torch.tensor([[1, 1, 1, 0]]))
    assert tv.metrics["loss/masked_frac"] == pytest.approx(1 / 3)


# --- past the log-ratio clamp and on the boundary ---------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shift_and_binary_kl_come_from_the_log_probs_not_the_clamped_ratio(dtype):
    """mu = 1e-12, pi = 0.5: log r = 26.9 is past the +-20 clamp, but pi - mu is 0.5, not mu * (e^20 - 1)."""
    def token(name, pi, mu, adv):
        log_prob = torch.tensor([[math.log(pi)]], dtype=dtype, requires_grad=True)
        hyper = {"delta": 0.15} if name == "drpo" else {}
        out = get_loss(name, **hyper)(log_prob=log_prob, rollout_log_prob=torch.tensor([[math.log(mu)]], dtype=dtype),
                             advantages=torch.tensor([adv], dtype=dtype), response_mask=torch.ones(1, 1))
        (grad,) = torch.autograd.grad(out.per_token.sum(), log_prob)
        return out.weight.item(), grad.item(), out.metrics

    w, grad, metrics = token("drpo", 0.5, 1e-12, +1.0)
    assert w == pytest.approx(1 - 0.5 / 0.15, rel=1e-6)  # -2.33: past the boundary, a pull back
    assert grad > 0 and metrics["loss/corrective_frac"] == 1
    assert metrics["shift/abs_max"] == pytest.approx(0.5, rel=1e-6)
    w, grad, _ = token("drpo", 1e-12, 0.5, -1.0)  # the mirror case: pushed down past the clamp
    assert w == pytest.approx(1 - 0.5 / 0.15, rel=1e-6) and grad < 0
    for name in ("dppo_binary_tv", "dppo_binary_kl"):
        w, grad, metrics = token(name, 0.5, 1e-12, +1.0)  # TV shift 0.5, binary KL ~ log 2: both past delta
        assert w == 0 and grad == 0 and metrics["loss/masked_frac"] == 1, name
    # binary KL by hand: mu log(mu/pi) + (1-mu) log((1-mu)/(1-pi)) = log 2 up to 3e-11
    assert token("dppo_binary_kl", 0.5, 1e-12, +1.0)[2]["shift/binary_kl"] == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "hyper", "mu", "shift"),
                         [("drpo", {"delta": 0.15}, 0.5, 0.15), ("drpo", {"delta": 0.1}, 0.3, 0.1),
                          ("drpo", {"delta": 0.15}, 0.7, 0.15), ("spo", {"eps": 0.2}, 0.5, 0.1)])
def test_tokens_on_the_boundary_count_as_masked(name, hyper, mu, shift, dtype):
    """|pi - mu| = delta (DRPO) or |r - 1| = eps (SPO), both directions: w is 0 in exact arithmetic.

    Rounding leaves 1 - shift/delta at +-1e-16 (float64) or +-1e-7 (float32); neither may count a boundary
    token as corrective or leave it out of the masked fraction.
    """
    pi = torch.tensor([[mu + shift, mu - shift]], dtype=torch.float64)
    out = get_loss(name, **hyper)(log_prob=pi.log().to(dtype), rollout_log_prob=torch.full((1, 2), mu).log().to(dtype),
                                  advantages=torch.tensor([[1.0, -1.0]], dtype=dtype), response_mask=torch.ones(1, 2))
    assert out.weight.tolist() == [[0.0, 0.0]]
    assert out.metrics["loss/masked_frac"] == 1 and out.metrics["loss/corrective_frac"] == 0


# --- Top-K at the edges ------------------------------------------------------------------------------

def kl_by_hand(mu: list[float], pi: list[float]) -> float:
    return sum(m * math.log(m / p) for m, p in zip(mu, pi, strict=True) if m > 0)


def test_topk_rest_bucket_survives_a_top_k_mass_near_one():
    """pi puts 1 - 1e-8 on mu's top-2, mu puts 1 - 1e-3: float32's 1 - sum(pi_topk) cancels to 0 or 6e-8.

    Buckets {0, 1, rest}; the sampled token 1 is inside. KL = 0.6 log 1 + 0.399 log(0.399/(0.4 - 1e-8))
    + 1e-3 log(1e-3/1e-8) = 0.01051, under delta = 0.05, so the (harmful: A > 0, pi > mu) token is kept.
    """
    pi = [0.6, 0.4 - 1e-8] + [0.25e-8] * 4
    mu_topk = [0.6, 0.399]
    expected_kl = kl_by_hand(mu_topk + [1e-3], pi[:2] + [1e-8])
    expected_tv = 0.5 * (0 + 0.001 - 1e-8 + 1e-3 - 1e-8)
    assert expected_kl == pytest.approx(0.0105142, abs=1e-7)
    logits = torch.tensor(pi, dtype=torch.float64).log().float().view(1, 1, 6)
    kwargs = dict(log_prob=torch.tensor([[math.log(pi[1])]], dtype=torch.float32),
                  rollout_log_prob=torch.tensor([[math.log(0.399)]], dtype=torch.float32),
                  advantages=torch.tensor([1.0], dtype=torch.float32), response_mask=torch.ones(1, 1),
                  rollout_topk_ids=torch.tensor([[[0, 1]]]),
                  rollout_topk_log_probs=torch.tensor([[mu_topk]], dtype=torch.float64).log().float(),
                  logits=logits, response_ids=torch.tensor([[1]]))
    loss = get_loss("dppo_topk_kl")
    tv, kl = dppo_module.topk_divergences(loss.inputs(**kwargs))
    assert kl.item() == pytest.approx(expected_kl, rel=1e-4)
    assert tv.item() == pytest.approx(expected_tv, rel=1e-4)
    assert loss(**kwargs).weight.item() == 1


def test_topk_partition_is_decided_by_token_ids():
    """Two rollout sources disagree by 1e-7 on the sampled token's log mu: membership follows the ids.

    Vocabulary of 4, mu = (0.5, 0.2, 0.2, 0.1), mu's top-2 = {0, 1} (a tie broken by id). Token 1 sampled,
    its log mu recorded 1e-7 below its top-k entry: it is inside, buckets {0, 1, rest}. Token 2 sampled,
    its log mu 1e-7 above the k-th top-k entry: it is outside, buckets {0, 1, 2, rest}.
    """
    mu = [0.5, 0.2, 0.2, 0.1]
    pi = [0.4, 0.25, 0.3, 0.05]
    logits = torch.tensor(pi).log().view(1, 1, 4).expand(1, 2, 4)
    topk_lp = torch.tensor(mu[:2]).log().view(1, 1, 2).expand(1, 2, 2)
    log_mu_sampled = torch.tensor([[math.log(0.2) - 1e-7, math.log(0.2) + 1e-7]])
    kwargs = dict(log_prob=torch.tensor([[math.log(pi[1]), math.log(pi[2])]]), rollout_log_prob=log_mu_sampled,
                  advantages=torch.tensor([1.0]), response_mask=torch.ones(1, 2),
                  rollout_topk_ids=torch.tensor([[[0, 1], [0, 1]]]), rollout_topk_log_probs=topk_lp,
                  logits=logits, response_ids=torch.tensor([[1, 2]]))
    tv, kl = dppo_module.topk_divergences(get_loss("dppo_topk_tv").inputs(**kwargs))
    inside_tv = 0.5 * (0.1 + 0.05 + 0.05)  # rest: mu 0.3, pi 0.35
    outside_tv = 0.5 * (0.1 + 0.05 + 0.1 + 0.05)
    torch.testing.assert_close(tv, torch.tensor([[inside_tv, outside_tv]]), rtol=1e-6, atol=1e-9)
    inside_kl = kl_by_hand([0.5, 0.2, 0.3], [0.4, 0.25, 0.35])
    outside_kl = kl_by_hand(mu, pi)
    torch.testing.assert_close(kl, torch.tensor([[inside_kl, outside_kl]]), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="response_ids"):
        get_loss("dppo_topk_tv")(**{**kwargs, "response_ids": None})


# ----------------------------------------------------------------------------- a trust region that cannot bind
def _weights(loss, pi: torch.Tensor, mu: torch.Tensor, sign: float) -> torch.Tensor:
    advantages = torch.full((1, pi.numel()), sign, dtype=torch.float64)
    out = loss(log_prob=pi.log().reshape(1, -1), rollout_log_prob=mu.log().reshape(1, -1), advantages=advantages,
               response_mask=torch.ones(1, pi.numel(), dtype=torch.bool))
    return out.weight.reshape(-1)


def test_drpo_cannot_bind_from_delta_1_and_its_weight_stays_in_the_stated_bound():
    grid = torch.linspace(1e-4, 1 - 1e-4, 200, dtype=torch.float64)
    pi, mu = grid.repeat_interleave(len(grid)), grid.repeat(len(grid))  # every pair: |pi - mu| up to 0.9998
    assert cannot_bind(get_loss("drpo")) is None and cannot_bind(get_loss("drpo", delta=0.99)) is None
    assert (_weights(get_loss("drpo", delta=0.99), pi, mu, 1.0) < 0).any()  # below 1 it binds
    for delta in (1.0, 2.0, 12.5):
        message = cannot_bind(get_loss("drpo", delta=delta))
        assert f"within ({1 - 1 / delta:.3g}, {1 + 1 / delta:.3g})" in message and "recommended" in message
        for sign in (1.0, -1.0):
            w = _weights(get_loss("drpo", delta=delta), pi, mu, sign)
            assert (w > 1 - 1 / delta - 1e-9).all() and (w < 1 + 1 / delta + 1e-9).all() and (w > 0).all()
    assert "(0.5, 1]" in cannot_bind(get_loss("drpo_clipped", delta=2.0))
    assert "cannot bind" in cannot_bind(get_loss("drpo_reference"))


def test_spo_from_eps_1_cannot_bind_on_tokens_pushed_down_only():
    r = torch.tensor([1e-6, 0.5, 1.0, 3.0, 40.0], dtype=torch.float64)
    mu = torch.full_like(r, 0.02)
    spo = get_loss("spo", eps=2.0)
    assert "above 0.5" in cannot_bind(spo) and "pushed up" in cannot_bind(spo)
    assert (_weights(spo, r * mu, mu, -1.0) > 0.5 - 1e-6).all()  # A < 0: w = 1 + (r - 1)/eps > 1 - 1/eps
    assert (_weights(spo, r * mu, mu, 1.0) < 0).any()  # A > 0: w = 0 at r = 3, negative past it
    assert cannot_bind(get_loss("spo")) is None and cannot_bind(get_loss("ppo_clip", eps_high=5.0)) is None
    with pytest.warns(UserWarning, match="eps=2 >= 1"):
        warn_if_cannot_bind(spo)


def test_drpo_losses_lists_every_loss_and_names_the_preset_that_cannot_bind(capsys):
    from drpo.cli import main

    assert main(["losses"]) == 0
    raw = capsys.readouterr().out
    assert set(re.findall(r"^\S (\w+)", raw, flags=re.MULTILINE)) >= set(LOSSES) | set(PRESETS)  # the name column
    out = " ".join(raw.split())
    assert "warning (drpo_reference): get_loss('drpo', anchor='rollout', delta=12.5): delta=12.5 >= 1" in out
    assert out.count("cannot bind") == 1  # every registry default binds


def test_a_half_precision_dtype_mismatch_says_to_cast_pi_up_not_mu_down():
    log_prob = torch.full((1, 3), -1.0, dtype=torch.bfloat16)
    mu = torch.full((1, 3), -1.0)  # float32, as the adapters keep it on purpose
    with pytest.raises(TypeError, match=r"cast log_prob up to float32.*keep the others in float32"):
        get_loss("drpo")(log_prob=log_prob, rollout_log_prob=mu, advantages=torch.ones(1), response_mask=torch.ones(1, 3))


def test_a_loss_returning_a_cached_tensor_does_not_corrupt_the_cache():
    """The wrapper masks the returned objective and weight in place: a loss that hands back LossInputs' own ratio
    (here as both) must not see that ratio masked (the output ratio, the gradient and the metrics all read it)."""
    from drpo.losses import Hyper, register_loss

    register_loss("test_ratio_weight", Hyper, "J = w = r")(lambda x, hyper: (x.ratio, x.ratio))
    try:
        log_prob = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
        mu = torch.tensor([[-1.5, -1.0, -0.7]])
        mask = torch.tensor([[1.0, 1.0, 0.0]])
        out = get_loss("test_ratio_weight")(log_prob=log_prob, rollout_log_prob=mu, advantages=torch.ones(1),
                                            response_mask=mask)
        ratio = (log_prob.detach() - mu).exp()
        torch.testing.assert_close(out.ratio, ratio)  # unmasked, as for every loss
        torch.testing.assert_close(out.weight, ratio * mask)
        torch.testing.assert_close(out.per_token.detach(), -(ratio * mask))  # -J, with J = r
        (grad,) = torch.autograd.grad(out.per_token.sum(), log_prob)
        torch.testing.assert_close(grad, -(ratio * ratio * mask))  # -w r A, with w = r
    finally:
        LOSSES.pop("test_ratio_weight", None)
