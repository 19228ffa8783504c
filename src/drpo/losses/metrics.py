"""The statistics every loss reports over the valid tokens (keys ``loss/*``, ``ratio/*``, ``shift/*``), computed
from the gradient weight w the loss returned and the cached tensors of :class:`LossInputs`.

Masked and corrective tokens are counted by exact comparison (w == 0, w < 0). A loss whose weight crosses 0
continuously (SPO, DRPO) therefore snaps it to exactly 0 on its boundary with :func:`snap_boundary`, while a
tiny kept weight (DPPO's min(r, C) / r far past C) stays a kept token.
"""

from __future__ import annotations

import torch

from drpo.losses.inputs import LossInputs

# w > 1 + this counts as amplified: an fp32 recompute of the same weights leaves |pi - mu| ~ 1e-7, i.e. w - 1 ~ 1e-6
# at delta 0.15 (1e-6 / delta in general), which amplifies nothing; a bf16 behavior policy (|pi - mu| ~ 1e-3) is well above it
AMPLIFIED_TOLERANCE = 1e-3
# every key loss_metrics may return (shift/binary_kl only for the losses that compute it), for callers that must
# hand the same keys to a collective on every process
METRIC_KEYS = ("loss/masked_frac", "loss/corrective_frac", "loss/amplified_frac", "loss/weight_dev",
               "loss/weight_mean", "loss/weight_min", "loss/weight_max",
               "ratio/mean", "ratio/max", "shift/abs_mean", "shift/abs_max", "shift/binary_kl")


def snap_boundary(weight: torch.Tensor, width: float) -> torch.Tensor:
    """``weight`` with values within rounding of 0 set to exactly 0, in place. [B, T]

    A weight 1 - shift / width is 0 in exact arithmetic on the boundary but comes out +-2e-16 (float64)
    or +-1e-7 (float32), which would count boundary tokens as corrective or kept (loss/corrective_frac
    tests w < 0, loss/masked_frac w == 0). The shift's rounding is a few ulps of 1, divided by the width.
    """
    tolerance = 16 * torch.finfo(weight.dtype).eps * (1 + 1 / width)
    return weight.masked_fill_(weight.abs() <= tolerance, 0.0)


@torch.no_grad()
def loss_metrics(x: LossInputs, weight: torch.Tensor) -> dict[str, float]:
    """Statistics over the valid tokens, keys ``METRIC_KEYS``.

    ``weight`` is already 0 on padding. Masked sums are dot products with the mask (one pass, no temporary);
    min and max fill padding with the valid mean, which cannot change either.

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
