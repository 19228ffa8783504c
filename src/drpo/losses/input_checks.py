"""The checks of a loss call's tensors, before any loss sees them: shapes, dtypes, finiteness, log-probabilities
<= 0, and the tensors that the anchor or a top-k loss needs. Every error names the loss, the tensor and what to do.
"""

from __future__ import annotations

import torch

from drpo.losses.inputs import LossInputs


def check_inputs(
    loss: str,
    anchor: str,
    needs_topk: bool,
    log_prob: torch.Tensor,
    rollout_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    old_log_prob: torch.Tensor | None = None,
    rollout_topk_ids: torch.Tensor | None = None,
    rollout_topk_log_probs: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    response_ids: torch.Tensor | None = None,
) -> LossInputs:
    """The :class:`LossInputs` of loss ``loss`` for these tensors, anchored on mu (``anchor="rollout"``) or on
    pi_old (``"recompute"``); raises a ValueError or TypeError that says what to fix."""
    _require_float(loss, "log_prob", log_prob)
    if log_prob.dim() != 2:
        raise ValueError(f"{loss}: log_prob must be [B, T], got shape {tuple(log_prob.shape)}")
    shape = log_prob.shape
    _same(loss, "rollout_log_prob", rollout_log_prob, shape, log_prob.dtype)
    _same(loss, "response_mask", response_mask, shape, None)
    _same(loss, "advantages", advantages, shape[:1] if advantages.dim() == 1 else shape, log_prob.dtype)
    _check_finite(loss, "advantages", advantages.detach())
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1], broadcasts over T
    if anchor == "recompute":
        if old_log_prob is None:
            raise ValueError(f"{loss}: anchor='recompute' needs old_log_prob (pi_old recomputed by the "
                             "trainer before the update); pass it, or use anchor='rollout'")
        _same(loss, "old_log_prob", old_log_prob, shape, log_prob.dtype)
    for label, tensor in (("log_prob", log_prob), ("rollout_log_prob", rollout_log_prob),
                          ("old_log_prob", old_log_prob)):
        if tensor is not None:
            _check_log_probs(loss, label, tensor.detach())
    if needs_topk:
        _check_topk(loss, shape, rollout_topk_ids, rollout_topk_log_probs, logits, response_ids)
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
