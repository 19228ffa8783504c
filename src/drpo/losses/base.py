"""The loss contract: registry, validated hyper-parameters, input checks, metrics.

Every policy loss in this package is a pure function ``fn(x: LossInputs, hyper) -> (objective, weight)``:

- ``objective`` [B, T]: the value of the per-token objective J_t to *maximise* (None for the surrogate
  J_t = sg(w_t * r_t) * A_t * log pi_t, which the wrapper forms from the gradient);
- ``weight``    [B, T]: the analytic gradient weight w_t of docs/method.md (Eq. 1), such that
  ``d J_t / d log_prob_t = w_t * r_t * A_t`` with r_t = pi_t / anchor_t (the untruncated ratio).

The wrapper (:class:`Loss`) checks the inputs, builds :class:`LossInputs` once, masks, computes the
metrics every loss reports, and attaches the gradient -w_t * r_t * A_t to ``per_token`` through a
one-multiply backward (:class:`_AnalyticGradient`). The loss is memory-bound elementwise work, so this
saves the whole autograd graph of the objective; tests/test_losses.py checks that the attached gradient
equals autograd through docs/method.md's objectives written out independently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import pydantic
import torch

from drpo.validation import describe_fields, format_validation_error

# w > 1 + this counts as amplified: an fp32 recompute of the same weights leaves |pi - mu| ~ 1e-7, i.e. w - 1 ~ 1e-6
# at delta 0.15 (1e-6 / delta in general), which amplifies nothing; a bf16 behavior policy (|pi - mu| ~ 1e-3) is well above it
AMPLIFIED_TOLERANCE = 1e-3
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 4.9e8: past that the ratio carries no information, only overflow risk
# every key loss_metrics may return (shift/binary_kl only for the losses that compute it), for callers that must
# hand the same keys to a collective on every process
METRIC_KEYS = ("loss/masked_frac", "loss/corrective_frac", "loss/amplified_frac", "loss/weight_dev",
               "loss/weight_mean", "loss/weight_min", "loss/weight_max",
               "ratio/mean", "ratio/max", "shift/abs_mean", "shift/abs_max", "shift/binary_kl")


class Hyper(pydantic.BaseModel):
    """Hyper-parameters shared by every ratio- or mask-based loss."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    anchor: Literal["rollout", "recompute"] = pydantic.Field(
        "rollout",
        description="reference of the ratio and trust region: rollout = mu (behavior policy), "
        "recompute = pi_old (trainer's recomputed log-probs, as decoupled PPO clips)",
    )


@dataclass(frozen=True)
class LossOutput:
    per_token: torch.Tensor  # [B, T] loss to minimise (-J_t), 0 where masked
    weight: torch.Tensor  # [B, T] analytic gradient weight w_t, detached, 0 where masked
    ratio: torch.Tensor  # [B, T] r_t = pi_t / anchor_t (log-ratio clamped to +-20), detached
    metrics: dict[str, float]


class LossInputs:
    """Checked tensors of one loss call, plus the derived quantities several losses share.

    Derived tensors are cached so a loss and the metrics never compute the same thing twice.
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


def snap_boundary(weight: torch.Tensor, width: float) -> torch.Tensor:
    """``weight`` with values within rounding of 0 set to exactly 0, in place. [B, T]

    A weight 1 - shift / width is 0 in exact arithmetic on the boundary but comes out +-2e-16 (float64)
    or +-1e-7 (float32), which would count boundary tokens as corrective or kept (loss/corrective_frac
    tests w < 0, loss/masked_frac w == 0). The shift's rounding is a few ulps of 1, divided by the width.
    """
    tolerance = 16 * torch.finfo(weight.dtype).eps * (1 + 1 / width)
    return weight.masked_fill_(weight.abs() <= tolerance, 0.0)


# Returns (objective, weight) tensors, which the wrapper masks in place: one that shares memory with an input or
# a cached tensor of LossInputs is copied first. A loss whose objective is the
# surrogate sg(w * r) * A * log pi returns None for it: the wrapper forms it from the gradient in one multiply.
LossFn = Callable[[LossInputs, Hyper], "tuple[torch.Tensor | None, torch.Tensor]"]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    hyper: type[Hyper]
    summary: str
    needs_topk: bool = False


LOSSES: dict[str, LossSpec] = {}
ALIASES: dict[str, str] = {}


def register_loss(name: str, hyper: type[Hyper], summary: str, aliases: tuple[str, ...] = (), needs_topk: bool = False):
    """Register a loss family function under ``name`` (and ``aliases``)."""

    def decorator(fn: LossFn) -> LossFn:
        if name in LOSSES or name in ALIASES:
            raise ValueError(f"loss '{name}' is registered twice")
        LOSSES[name] = LossSpec(name, fn, hyper, summary, needs_topk)
        for alias in aliases:
            ALIASES[alias] = name
        return fn

    return decorator


class Loss:
    """A registered loss bound to validated hyper-parameters; call it with the tensors of DESIGN.md."""

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
        name = self.name
        _require_float(name, "log_prob", log_prob)
        if log_prob.dim() != 2:
            raise ValueError(f"{name}: log_prob must be [B, T], got shape {tuple(log_prob.shape)}")
        shape = log_prob.shape
        _same(name, "rollout_log_prob", rollout_log_prob, shape, log_prob.dtype)
        _same(name, "response_mask", response_mask, shape, None)
        _same(name, "advantages", advantages, shape[:1] if advantages.dim() == 1 else shape, log_prob.dtype)
        _check_finite(name, "advantages", advantages.detach())
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(-1)  # [B, 1], broadcasts over T
        anchor = getattr(self.hyper, "anchor", "rollout")
        if anchor == "recompute":
            if old_log_prob is None:
                raise ValueError(f"{name}: anchor='recompute' needs old_log_prob (pi_old recomputed by the "
                                 "trainer before the update); pass it, or use anchor='rollout'")
            _same(name, "old_log_prob", old_log_prob, shape, log_prob.dtype)
        for label, tensor in (("log_prob", log_prob), ("rollout_log_prob", rollout_log_prob),
                              ("old_log_prob", old_log_prob)):
            if tensor is not None:
                _check_log_probs(name, label, tensor.detach())
        if self.spec.needs_topk:
            _check_topk(name, shape, rollout_topk_ids, rollout_topk_log_probs, logits, response_ids)
        return LossInputs(
            log_prob=log_prob,
            anchor_log_prob=old_log_prob if anchor == "recompute" else rollout_log_prob,
            advantages=advantages,
            response_mask=response_mask,
            rollout_topk_ids=rollout_topk_ids,
            rollout_topk_log_probs=rollout_topk_log_probs,
            logits=logits,
            rollout_log_prob=rollout_log_prob,
            response_ids=response_ids,
        )


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


def _require_float(loss: str, label: str, tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{loss}: {label} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{loss}: {label} must be a floating tensor, got {tensor.dtype}")


def _same(loss: str, label: str, tensor, shape, dtype) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{loss}: {label} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.shape != shape:
        raise ValueError(f"{loss}: shape mismatch: {label} has shape {tuple(tensor.shape)} but log_prob has "
                         f"{tuple(shape)}" + (" (advantages may also be [B])" if label == "advantages" else ""))
    if dtype is not None and tensor.dtype != dtype:
        half = (torch.float16, torch.bfloat16)
        advice = ("cast log_prob up to float32 (log_prob.float()) and keep the others in float32: rounding log-probs "
                  "to half precision adds errors as large as the mismatch the loss measures"
                  if dtype in half or tensor.dtype in half else "cast both to one dtype")
        raise TypeError(f"{loss}: dtype mismatch: {label} is {tensor.dtype} but log_prob is {dtype}; {advice}")


def _check_finite(loss: str, label: str, tensor: torch.Tensor) -> None:
    # one reduction instead of an isfinite() pass: NaN and inf both survive a sum
    if not torch.isfinite(tensor.sum()):
        bad = (~torch.isfinite(tensor)).nonzero()
        if len(bad):
            raise ValueError(f"{loss}: {label} has {len(bad)} non-finite values (first at index "
                             f"{tuple(bad[0].tolist())}); fill padding with 0, not -inf or NaN")


def _check_log_probs(loss: str, label: str, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        _check_finite(loss, label, tensor)
    if high > 1e-4:
        raise ValueError(f"{loss}: {label} must be log-probabilities (<= 0), but its maximum is {high.item():.4g}")


def _check_topk(loss: str, shape, ids, log_probs, logits, response_ids) -> None:
    if ids is None or log_probs is None or logits is None or response_ids is None:
        missing = [n for n, t in (("rollout_topk_ids", ids), ("rollout_topk_log_probs", log_probs),
                                  ("logits", logits), ("response_ids", response_ids)) if t is None]
        raise ValueError(f"{loss}: a top-k loss needs {', '.join(missing)}: the rollout must record its top-k "
                         "token ids and log-probs (rollout top_k_logprobs > 0) and the trainer must pass logits "
                         "and the sampled token ids")
    if ids.dim() != 3 or ids.shape[:2] != shape:
        raise ValueError(f"{loss}: shape mismatch: rollout_topk_ids has shape {tuple(ids.shape)}, "
                         f"expected [B, T, K] with [B, T] = {tuple(shape)}")
    if log_probs.shape != ids.shape:
        raise ValueError(f"{loss}: shape mismatch: rollout_topk_log_probs has shape {tuple(log_probs.shape)} "
                         f"but rollout_topk_ids has {tuple(ids.shape)}")
    if logits.dim() != 3 or logits.shape[:2] != shape:
        raise ValueError(f"{loss}: shape mismatch: logits has shape {tuple(logits.shape)}, expected [B, T, V] "
                         f"with [B, T] = {tuple(shape)}")
    if response_ids.shape != shape:
        raise ValueError(f"{loss}: shape mismatch: response_ids has shape {tuple(response_ids.shape)} but "
                         f"log_prob has {tuple(shape)}")
    for label, tensor in (("rollout_topk_ids", ids), ("response_ids", response_ids)):
        if tensor.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{loss}: {label} must be an integer tensor, got {tensor.dtype}")
    _check_log_probs(loss, "rollout_topk_log_probs", log_probs)


@torch.no_grad()
def loss_metrics(x: LossInputs, weight: torch.Tensor) -> dict[str, float]:
    """Statistics over valid tokens that every loss reports (keys as in DESIGN.md).

    ``weight`` is already 0 on padding. Masked and corrective tokens are counted by exact comparison
    (w == 0, w < 0): losses whose weight crosses 0 continuously snap it to 0 on the boundary
    (``snap_boundary``), while a tiny DPPO weight min(r, C)/r is a kept token and must not count as masked.
    Masked sums are dot products with the mask (one pass, no temporary); min and max fill padding with the
    valid mean, which cannot change either.

    What shows how far a loss departs from the plain policy gradient (w = 1): ``loss/amplified_frac``, the
    share of tokens with w > 1 (DRPO's tokens moving back towards mu, up to 1 + 1/delta), next to
    ``loss/corrective_frac`` (w < 0) and ``loss/masked_frac`` (w = 0); and ``loss/weight_dev``, mean |w - 1|.
    ``shift/binary_kl`` (mean Bernoulli KL(anchor || pi)) only where the loss computed it (the Binary-KL mask):
    elsewhere it would cost a loss as much again, and the trainer's ``mismatch/kl`` measures the rollout's.
    """
    mask = x.mask_f.reshape(-1)
    n = mask.sum()
    if n == 0:
        return {}
    valid = x.mask

    def mean_min_max(t: torch.Tensor) -> list[torch.Tensor]:
        mean = torch.dot(t.reshape(-1), mask) / n
        return [mean, *torch.aminmax(torch.where(valid, t, mean))]

    w = weight.reshape(-1)
    padding = w.numel() - n
    abs_shift = x.shift.abs()
    w_mean, w_min, w_max = mean_min_max(weight)
    r_mean, _, r_max = mean_min_max(x.ratio)
    shift_mean, _, shift_max = mean_min_max(abs_shift)
    keys = list(METRIC_KEYS[:-1])
    stats = [
        (torch.count_nonzero(w == 0) - padding) / n, torch.count_nonzero(w < 0) / n,
        torch.count_nonzero(w > 1 + AMPLIFIED_TOLERANCE) / n, torch.dot((w - 1).abs_(), mask) / n,
        w_mean, w_min, w_max, r_mean, r_max, shift_mean, shift_max,
    ]
    binary_kl = x.computed("binary_kl")  # only the losses that mask on it pay its ~12 passes
    if binary_kl is not None:
        keys.append(METRIC_KEYS[-1])
        stats.append(torch.dot(binary_kl.reshape(-1), mask) / n)
    return dict(zip(keys, torch.stack(stats).tolist(), strict=True))


def get_loss(name: str, **hyper) -> Loss:
    """Look up a loss (or a preset, see ``PRESETS``) by name and bind validated hyper-parameters.

    >>> get_loss("drpo", delta=0.2)
    get_loss('drpo', anchor='rollout', delta=0.2)
    """
    from drpo.losses.presets import PRESETS  # presets name registry entries, so import late

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


def hyper_summary(spec: LossSpec) -> str:
    """'delta=0.15, anchor=...': the family's own hyper-parameters first, the shared anchor last."""
    return describe_fields(spec.hyper, last=("anchor",))
