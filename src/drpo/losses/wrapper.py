"""The wrapper: :class:`Loss` (a registered loss bound to validated hyper-parameters) and ``get_loss``.

The conventions every loss of this package relies on are stated here, once.

**A loss function** is ``fn(x: LossInputs, hyper) -> weight`` and returns only the gradient weight w_t [B, T]
of its objective J_t:

    d J_t / d log pi_t = w_t * r_t * A_t,   r_t = pi_t / anchor_t                      (docs/method.md, Eq. 1)

with r_t untruncated (its log clamped at +-20, ``LOG_RATIO_CLAMP``). It does not mask padding, negate, or
compute the value of J_t: the wrapper masks and negates, and needs no value of J_t (below). Its docstring
gives J_t, w_t and the equation of the method they come from. It reads the cached tensors of ``x`` and must
not change them in place; it may return one of them (the wrapper copies a weight that shares memory with
``x`` before masking it).

**The wrapper**, the same for every loss:

1. checks the tensors (drpo.losses.input_checks) and picks the anchor: mu (``rollout_log_prob``) for
   ``anchor="rollout"``, pi_old (``old_log_prob``) for ``anchor="recompute"``;
2. builds :class:`LossInputs` once and calls ``fn``;
3. masks: w_t = 0 on padding (``response_mask`` 0);
4. forms the per-token loss below, 0 on padding, and attaches its gradient -w_t r_t A_t with respect to
   ``log_prob`` through a one-multiply backward (:class:`_AnalyticGradient`). The loss is memory-bound
   elementwise work, so this saves the whole autograd graph of J; tests/test_losses.py checks the attached
   gradient against autograd through every J_t written out independently;
5. computes the statistics every loss reports from w (drpo.losses.metrics).

**The per-token loss, and what ``loss/value`` means.** For every loss,

    per_token_t = -sg(w_t) * r_t * A_t

(sg: stop-gradient): the negated objective sg(w) r A, whose gradient is the update of that loss (Eq. 1) and
whose value is defined alike for every loss: minus the importance-weighted advantage the update follows,
-r_t A_t on a token with w_t = 1 (the importance-sampled objective, PPO's objective inside its clip), 0 on a
dropped token (w_t = 0), of the opposite sign where the loss pulls a token back (w_t < 0). A method's own
J_t (PPO's clipped objective, SPO's and DRPO's quadratic penalty, the log-pi surrogate sg(c) A log pi of
pg_is, CISPO and DPPO) has the same gradient but another value, and no loss computes it. The trainer's
``loss/value`` is ``per_token`` aggregated as the run aggregates it (plus the MoE load-balancing term when
the model has one); the TRL and verl adapters hand the same per-token values to their framework.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydantic
import torch

from drpo.losses.input_checks import check_inputs
from drpo.losses.inputs import LossInputs
from drpo.losses.metrics import loss_metrics
from drpo.losses.presets import PRESETS
from drpo.losses.registry import ALIASES, LOSSES, Hyper, LossSpec
from drpo.validation import format_validation_error


@dataclass(frozen=True)
class LossOutput:
    per_token: torch.Tensor  # [B, T] loss to minimise, -sg(w_t) r_t A_t (see above), 0 where masked
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
            weight = _owned(self.spec.fn(x, self.hyper), x)
            weight = weight.mul_(x.mask_f) if weight.shape == x.mask_f.shape else weight * x.mask_f  # [B, T]
            grad = (weight * x.ratio).mul_(-x.advantages)  # [B, T] d per_token / d log_prob
            per_token = grad.clone()  # [B, T] -sg(w) r A, equal to its gradient (d r / d log pi = r); a copy, so
            # a caller may change it in place without touching the backward's saved grad
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
