"""The wrapper: :class:`Loss` (a registered loss bound to validated hyper-parameters) and ``get_loss``.

The conventions every loss of this package relies on are stated here, once.

**A loss function** is ``fn(x: LossInputs, hyper) -> (objective, weight)`` and returns two tensors, [B, T] or
broadcastable to it:

- ``objective``: the value of J_t, the per-token objective (maximised) of the published method, as that method
  writes it (PPO's clipped objective, SPO's and DRPO's quadratic penalty, CISPO's sg(clip(r)) A log pi, ...);
- ``weight``: its gradient weight w_t,

    d J_t / d log pi_t = w_t * r_t * A_t,   r_t = pi_t / anchor_t                      (docs/method.md, Eq. 1)

with r_t untruncated (its log clamped at +-20, ``LOG_RATIO_CLAMP``). It does not mask padding or negate: the
wrapper does. Its docstring gives J_t, w_t and the equation of the method they come from, and the code computes
exactly those. It reads the cached tensors of ``x`` and must not change them in place; it may return one of them
(the wrapper copies a returned tensor that shares memory with ``x`` before masking it), but not one tensor of its
own as both objective and weight (the wrapper changes both in place).

**The wrapper**, the same for every loss:

1. checks the tensors (drpo.losses.input_checks) and picks the anchor: mu (``rollout_log_prob``) for
   ``anchor="rollout"``, pi_old (``old_log_prob``) for ``anchor="recompute"``;
2. builds :class:`LossInputs` once and calls ``fn``;
3. masks: J_t = w_t = 0 on padding (``response_mask`` 0);
4. forms the per-token loss below, 0 on padding, and attaches its gradient -w_t r_t A_t with respect to
   ``log_prob`` through a one-multiply backward (:class:`_AnalyticGradient`). The loss is memory-bound
   elementwise work, so this saves the whole autograd graph of J; tests/test_losses.py checks the value and the
   attached gradient against autograd through every J_t written out independently;
5. computes the statistics every loss reports from w (drpo.losses.metrics).

**The per-token loss, and what ``loss/value`` means: loss/value is minus the objective of the published
method; the gradient is the analytic weight's.** For every loss, on valid tokens,

    value of per_token_t = -J_t,    d per_token_t / d log pi_t = -w_t * r_t * A_t,

that is per_token_t = -sg(J_t) - (sg(w_t) r_t A_t - sg(w_t r_t A_t)) (sg: stop-gradient), both 0 on padding.
The value is the function's ``objective``, the gradient comes from its ``weight`` alone (no autograd through
J_t; tests/test_losses.py checks that autograd would give the same). The trainer's ``loss/value`` is ``per_token`` aggregated as the run
aggregates it (plus the MoE load-balancing term when the model has one); the TRL and verl adapters hand the
same per-token values to their framework.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydantic
import torch

from drpo.losses.input_checks import check_inputs
from drpo.losses.inputs import LossInputs
from drpo.losses.metrics import loss_metrics
from drpo.losses.registry import ALIASES, LOSSES, PRESETS, Hyper, LossSpec
from drpo.validation import format_validation_error


@dataclass(frozen=True)
class LossOutput:
    per_token: torch.Tensor  # [B, T] loss to minimise, -J_t with the gradient -w_t r_t A_t (above), 0 where masked
    weight: torch.Tensor  # [B, T] analytic gradient weight w_t, detached, 0 where masked
    ratio: torch.Tensor  # [B, T] r_t = pi_t / anchor_t (log-ratio clamped to +-20), detached
    metrics: dict[str, float]


class Loss:
    """A registered loss bound to validated hyper-parameters; call it with the tensors of one mini-batch."""

    def __init__(self, spec: LossSpec, hyper: Hyper):
        self.spec = spec
        self.hyper = hyper

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.model_dump().items())
        return f"get_loss({self.name!r}, {args})"

    def __call__(
        self,
        *,
        log_prob: torch.Tensor,
        rollout_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        old_log_prob: torch.Tensor | None = None,
        rollout_topk_ids: torch.Tensor | None = None,
        rollout_topk_log_probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        response_ids: torch.Tensor | None = None,
    ) -> LossOutput:
        """``response_ids`` [B, T] are the sampled token ids; top-k losses need them to tell whether the
        sampled token is one of mu's top-k (by id: two sources' log-probs of one token can differ)."""
        x = self.inputs(log_prob, rollout_log_prob, advantages, response_mask, old_log_prob,
                        rollout_topk_ids, rollout_topk_log_probs, logits, response_ids)
        with torch.no_grad():
            objective, weight = (_masked(_owned(t, x), x) for t in self.spec.fn(x, self.hyper))  # [B, T] each
            grad = (weight * x.ratio).mul_(-x.advantages)  # [B, T] d per_token / d log_prob
            per_token = objective.neg_()  # [B, T] -J
            metrics = loss_metrics(x, weight)
        if log_prob.requires_grad:
            per_token = _AnalyticGradient.apply(log_prob, per_token, grad)
        return LossOutput(per_token, weight, x.ratio, metrics)

    def inputs(self, log_prob, rollout_log_prob, advantages, response_mask, old_log_prob=None,
               rollout_topk_ids=None, rollout_topk_log_probs=None, logits=None, response_ids=None) -> LossInputs:
        """The checked :class:`LossInputs` a call with these tensors hands to the loss function."""
        return check_inputs(self.name, getattr(self.hyper, "anchor", "rollout"), self.spec.needs_topk,
                            log_prob, rollout_log_prob, advantages, response_mask, old_log_prob,
                            rollout_topk_ids, rollout_topk_log_probs, logits, response_ids)


def _masked(tensor: torch.Tensor, x: LossInputs) -> torch.Tensor:
    """``tensor`` times the mask, in place where it has the mask's shape. [B, T]"""
    return tensor.mul_(x.mask_f) if tensor.shape == x.mask_f.shape else tensor * x.mask_f


def _owned(tensor: torch.Tensor, x: LossInputs) -> torch.Tensor:
    """``tensor``, or a copy of it when it shares memory with a tensor of ``x`` (which masking in place would
    change: a cached ratio, or the caller's own log-probs)."""
    shared = {t.untyped_storage().data_ptr() for t in vars(x).values() if isinstance(t, torch.Tensor)}
    return tensor.clone() if tensor.untyped_storage().data_ptr() in shared else tensor


class _AnalyticGradient(torch.autograd.Function):
    """Identity on the per-token loss whose backward is d per_token / d log_prob = grad (one multiply)."""

    @staticmethod
    def forward(ctx, log_prob, per_token, grad):
        ctx.save_for_backward(grad)
        ctx.dtype = log_prob.dtype
        return per_token

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad_output * grad).to(ctx.dtype), None, None


def get_loss(name: str, **hyper) -> Loss:
    """Look up a loss (or a preset, see ``PRESETS``) by name and bind validated hyper-parameters.

    >>> get_loss("drpo", delta=0.2)
    get_loss('drpo', anchor='rollout', delta=0.2)
    """
    if name in PRESETS:
        base, preset_hyper = PRESETS[name]
        return get_loss(base, **{**preset_hyper, **hyper})
    canonical = ALIASES.get(name, name)
    if canonical not in LOSSES:
        valid = sorted(LOSSES) + sorted(ALIASES) + sorted(PRESETS)
        raise ValueError(f"unknown loss '{name}'. Valid names: {', '.join(valid)}")
    spec = LOSSES[canonical]
    try:
        bound = spec.hyper(**hyper)
    except pydantic.ValidationError as error:
        raise ValueError(format_validation_error(f"loss '{canonical}'", error, spec.hyper)) from None
    return Loss(spec, bound)
