"""log pi of sampled responses: one forward over prompt + response, the entropy, the chunked output head.

    out = sequence_log_probs(model, batch, temperature)   # batch: a drpo.models.sampling.RolloutBatch
    out.log_prob, out.entropy, out.logits                 # [N, T], [N, T], [N, T, V] (or None)

pi is softmax(logits / temperature) with the sampler's temperature but without its nucleus, as trainers
compute it, so top_p < 1 is itself a source of mismatch with the sampler's mu.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from drpo.models.sampling import RolloutBatch


class SequenceLogProbs(NamedTuple):
    log_prob: torch.Tensor  # [N, T] log pi of the response tokens, 0 on padding, with gradients
    entropy: torch.Tensor  # [N, T] entropy of pi at each response position, 0 on padding (a metric: no gradients)
    logits: torch.Tensor  # [N, T, V] float32 logits / temperature at the response positions (top-k losses)


# elements of one [rows, T, V] temporary of the entropy pass: 16 MiB of float32, whatever the batch
ENTROPY_CHUNK = 1 << 22


def sequence_log_probs(model: nn.Module, batch: RolloutBatch, temperature: float = 1.0,
                       keep_logits: bool = True) -> SequenceLogProbs:
    """log pi_theta of the sampled response tokens, by one forward over prompt + response.

    pi is softmax(logits / temperature), the sampler's distribution before any top-p truncation.
    log pi(y) = logit(y) - logsumexp(logits): the graph holds the logits alone, not a [N, T, V] log-softmax
    beside them, and the entropy (a metric) is computed without gradients in bounded chunks.
    With ``keep_logits=False``, a model that exposes ``head_inputs`` (drpo.models.hf.HFCausalLM) never
    materialises the [N, T, V] logits: :func:`head_log_probs` runs the output head over chunks of positions
    and keeps only the hidden states for the backward (``logits`` is then None).
    After the call, ``model.aux_loss`` holds the MoE load-balancing loss of this forward.
    """
    T = batch.response_ids.shape[1]
    head_inputs = None if keep_logits else getattr(model, "head_inputs", None)
    if head_inputs is not None and (head := head_inputs(batch.input_ids(), batch.attention_mask(), T + 1)):
        hidden, weight = head  # [N, T + 1, H], [V, H]
        log_prob, entropy = head_log_probs(hidden[:, :-1], weight, batch.response_ids, temperature)  # [N, T]
        return SequenceLogProbs(log_prob * batch.response_mask, entropy * batch.response_mask, None)
    # only the last T + 1 positions predict response tokens: the output head (a fifth of a small LM's FLOPs)
    # need not run over the prompt
    logits, _ = model(batch.input_ids(), batch.attention_mask(), logits_to_keep=T + 1)  # [N, T + 1, V]
    logits = logits[:, :-1]  # [N, T, V]: position t predicts response token t
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = logits.logsumexp(-1)  # [N, T]
    mask = batch.response_mask  # [N, T]
    log_prob = (logits.gather(-1, batch.response_ids[..., None])[..., 0] - log_norm) * mask  # [N, T]
    return SequenceLogProbs(log_prob, entropy_of_logits(logits, log_norm) * mask, logits)


@torch.no_grad()
def entropy_of_logits(logits: torch.Tensor, log_norm: torch.Tensor) -> torch.Tensor:
    """Entropy [N, T] of softmax(logits [N, T, V]) given its logsumexp [N, T]: log_norm - sum_v p_v logit_v."""
    entropy = torch.empty_like(log_norm)
    rows = max(1, ENTROPY_CHUNK // max(1, logits[0].numel()))
    for start in range(0, logits.shape[0], rows):
        chunk, norm = logits[start:start + rows], log_norm[start:start + rows]
        expected_logit = (chunk - norm[..., None]).exp_().mul_(chunk).sum(-1)  # [rows, T]
        entropy[start:start + rows] = norm - expected_logit
    return entropy


# elements of one [rows, V] logits chunk of the output head: 16 MiB of float32, whatever the batch
HEAD_CHUNK = 1 << 22


def head_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   chunk: int = HEAD_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(hidden @ weight.T / temperature) at ``targets``, entropy of that softmax), both [...].

    hidden [..., H], weight [V, H] (the output head), targets [...] long. The logits are formed over chunks
    of at most ``chunk`` elements ([rows, V]) and dropped: the backward recomputes each chunk from the hidden
    states and the logsumexp, so neither direction holds more than one chunk of logits, and the head's
    matmul never runs over all positions at once (a bf16 matmul over a 49k-token head and a few thousand
    positions made oneDNN try a 29 GB scratch allocation). Under autocast the matmul runs in the autocast
    dtype and its output is rounded to it, as ``nn.Linear`` would under autocast; the softmax is float32.
    The entropy is a metric: it carries no gradient.
    """
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else None
    shape = targets.shape
    log_prob, entropy = _HeadLogProb.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                           temperature, dtype, max(1, chunk // weight.shape[0]))
    return log_prob.view(shape), entropy.view(shape)


class _HeadLogProb(torch.autograd.Function):
    """Chunked output head + log-softmax at the targets (see :func:`head_log_probs`). Gradient of log p_y with
    respect to the logits: onehot(y) - p, divided by the temperature."""

    @staticmethod
    def _logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = (hidden.to(weight.dtype) @ weight.T).float()  # [rows, V]
        return logits / temperature if temperature != 1.0 else logits

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, dtype, rows):
        with torch.autocast(hidden.device.type, enabled=False):
            compute_weight = weight if dtype is None else weight.to(dtype)  # cast once, not per chunk
            log_prob = torch.empty(hidden.shape[0], device=hidden.device)  # [n]
            entropy, log_norm = torch.empty_like(log_prob), torch.empty_like(log_prob)
            for start in range(0, hidden.shape[0], rows):
                part = slice(start, start + rows)
                logits = _HeadLogProb._logits(hidden[part], compute_weight, temperature)  # [rows, V]
                log_norm[part] = norm = logits.logsumexp(-1)
                log_prob[part] = logits.gather(-1, targets[part, None])[:, 0] - norm
                entropy[part] = norm - (logits - norm[:, None]).exp_().mul_(logits).sum(-1)
        ctx.save_for_backward(hidden, weight, compute_weight, targets, log_norm)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.mark_non_differentiable(entropy)
        return log_prob, entropy

    @staticmethod
    def backward(ctx, grad_log_prob, _grad_entropy):
        hidden, weight, compute_weight, targets, log_norm = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.rows):
                part = slice(start, start + ctx.rows)
                logits = _HeadLogProb._logits(hidden[part], compute_weight, ctx.temperature)  # [rows, V]
                grad = logits.sub_(log_norm[part, None]).exp_().mul_(-grad_log_prob[part, None])  # -p g
                grad.scatter_add_(-1, targets[part, None], grad_log_prob[part, None])  # + onehot(y) g
                if ctx.temperature != 1.0:
                    grad.div_(ctx.temperature)
                grad = grad.to(compute_weight.dtype)  # [rows, V]
                if grad_hidden is not None:
                    grad_hidden[part] = grad @ compute_weight
                if grad_weight is not None:
                    grad_weight += grad.T @ hidden[part].to(compute_weight.dtype)
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None

