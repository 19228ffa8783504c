"""The wrapper: :class:`Loss`, a registered loss bound to validated hyper-parameters, and ``get_loss``.

Every policy loss in this package is a pure function ``fn(x: LossInputs, hyper) -> (objective, weight)``:

- ``objective`` [B, T]: the value of the per-token objective J_t to *maximise* (None for the surrogate
  J_t = sg(w_t * r_t) * A_t * log pi_t, which the wrapper forms from the gradient);
- ``weight``    [B, T]: the analytic gradient weight w_t of docs/method.md (Eq. 1), such that
  ``d J_t / d log_prob_t = w_t * r_t * A_t`` with r_t = pi_t / anchor_t (the untruncated ratio).

The wrapper checks the inputs, builds :class:`LossInputs` once, masks, computes the metrics every loss
reports, and attaches the gradient -w_t * r_t * A_t to ``per_token`` through a one-multiply backward
(:class:`_AnalyticGradient`). The loss is memory-bound elementwise work, so this saves the whole autograd
graph of the objective; tests/test_losses.py checks that the attached gradient equals autograd through
docs/method.md's objectives written out independently.
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
    per_token: torch.Tensor  # [B, T] loss to minimise (-J_t), 0 where masked
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
        x = self._check(log_prob, rollout_log_prob, advantages, response_mask, old_log_prob,
                        rollout_topk_ids, rollout_topk_log_probs, logits, response_ids)
        with torch.no_grad():
            objective, weight = (_owned(t, x) for t in self.spec.fn(x, self.hyper))
            weight = weight.mul_(x.mask_f) if weight.shape == x.mask_f.shape else weight * x.mask_f  # [B, T]
            grad = (weight * x.ratio).mul_(-x.advantages)  # [B, T] d per_token / d log_prob
            # -sg(w r) A log pi, or the loss's own objective, masked and negated
            per_token = grad * x.log_prob if objective is None else objective.mul_(x.mask_f).neg_()  # [B, T]
            metrics = loss_metrics(x, weight)
        if log_prob.requires_grad:
            per_token = _AnalyticGradient.apply(log_prob, per_token, grad)
        return LossOutput(per_token, weight, x.ratio, metrics)

    def _check(self, log_prob, rollout_log_prob, advantages, response_mask, old_log_prob=None,
               rollout_topk_ids=None, rollout_topk_log_probs=None, logits=None, response_ids=None) -> LossInputs:
        return check_inputs(self.name, getattr(self.hyper, "anchor", "rollout"), self.spec.needs_topk,
                            log_prob, rollout_log_prob, advantages, response_mask, old_log_prob,
                            rollout_topk_ids, rollout_topk_log_probs, logits, response_ids)


def _owned(tensor: torch.Tensor | None, x: LossInputs) -> torch.Tensor | None:
    """``tensor``, or a copy of it when it shares memory with a tensor of ``x`` (which masking in place would
    change: a cached ratio, or the caller's own log-probs)."""
    if tensor is None:
        return None
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
