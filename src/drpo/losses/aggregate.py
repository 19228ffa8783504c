"""Loss aggregation: how per-token losses become one scalar (separate from the losses, as in verl).

- token-mean:              sum over valid tokens / number of valid tokens
- seq-mean-token-sum:      per-sequence sum, mean over sequences
- seq-mean-token-mean:     per-sequence mean, mean over sequences
- seq-mean-token-sum-norm: per-sequence sum / a fixed horizon, mean over sequences (Dr. GRPO,
                           length-unbiased; the horizon is a constant such as the max response length)
Sequences without any valid token are left out of the sequence means.
"""

from __future__ import annotations

import torch

from drpo.constants import AGGREGATIONS


def aggregate(per_token: torch.Tensor, response_mask: torch.Tensor, mode: str = "token-mean",
              horizon: int | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    >>> loss = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]); mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> aggregate(loss, mask, "token-mean").item(), aggregate(loss, mask, "seq-mean-token-mean").item()
    (2.0, 2.25)
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode '{mode}'. Valid modes: {', '.join(AGGREGATIONS)}")
    if per_token.shape != response_mask.shape:
        raise ValueError(f"shape mismatch: per_token has shape {tuple(per_token.shape)} but response_mask has "
                         f"{tuple(response_mask.shape)}")
    if mode == "seq-mean-token-sum-norm" and (horizon is None or horizon <= 0):
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs a fixed horizon > 0 (e.g. the max response "
                         f"length), got horizon={horizon!r}")
    mask = response_mask.to(per_token.dtype)  # [B, T]
    masked = per_token * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1)
    tokens_per_seq = mask.sum(-1)  # [B]
    seq_sum = masked.sum(-1)  # [B]
    num_seqs = (tokens_per_seq > 0).sum().clamp(min=1)
    if mode == "seq-mean-token-sum":
        return seq_sum.sum() / num_seqs
    if mode == "seq-mean-token-mean":
        return (seq_sum / tokens_per_seq.clamp(min=1)).sum() / num_seqs
    return seq_sum.sum() / num_seqs / horizon
