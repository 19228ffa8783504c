"""The sampler: responses drawn from any model of the forward contract, with the log-prob of each draw.

    batch = generate(model, prompts, group_size=8, max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.pad_id)
    batch.response_ids, batch.rollout_log_prob      # [N, T] the sampled tokens and log mu of each

The log-prob recorded for a token is that of the distribution actually sampled from: softmax of
logits / temperature, renormalised over the nucleus when top_p < 1 (:func:`sampling_log_probs`).
The native behavior policy (drpo/behavior/native.py) runs this sampler on its copy of the policy; evaluation runs it on
the policy itself; drpo/models/log_probs.py scores the :class:`RolloutBatch` it returns under pi.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from drpo.models.transformer import KVCache

# top-k entries outside the top-p nucleus have probability 0; the losses require finite log-probs, and
# exp(-1e4) is exactly 0 in float32 while differences of such numbers stay finite
TOPK_LOG_PROB_FLOOR = -1e4


@dataclass
class RolloutBatch:
    """N = n_prompts * group_size sampled responses; rows of a group are consecutive."""

    prompt_ids: torch.Tensor  # [N, P] long, left-padded with pad_id
    prompt_mask: torch.Tensor  # [N, P] long, 1 real, 0 padding
    response_ids: torch.Tensor  # [N, T] long, right-padded with pad_id after EOS
    response_mask: torch.Tensor  # [N, T] float32, 1 for response tokens including EOS
    rollout_log_prob: torch.Tensor  # [N, T] float32 log mu of the sampled tokens, 0 on padding
    group_index: torch.Tensor  # [N] long, the prompt each row answers
    rollout_topk_ids: torch.Tensor | None = None  # [N, T, K] long, mu's top-k tokens (pad_id on padding)
    rollout_topk_log_probs: torch.Tensor | None = None  # [N, T, K] float32, their log mu (0 on padding)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # [N, P + T]

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)  # [N, P + T]

    def select(self, rows: torch.Tensor | slice) -> RolloutBatch:
        """The rows ``rows`` of every tensor: a mini-batch."""
        return RolloutBatch(**{f.name: None if (t := getattr(self, f.name)) is None else t[rows] for f in fields(self)})



def sampling_log_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probs [..., V] of the distribution the sampler draws from: logits / temperature, then the nucleus.

    The nucleus keeps the most likely tokens until their mass reaches top_p (always at least one) and
    renormalises; tokens outside it get -inf.
    """
    # float32 at least; float64 logits (llama.cpp's engine, which records mu in float64) stay float64
    log_p = (logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature).log_softmax(-1)  # [..., V]
    if top_p < 1.0:
        sorted_log_p, order = log_p.sort(-1, descending=True)
        sorted_p = sorted_log_p.exp()
        outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # mass before the token already reaches top_p
        log_p = log_p.masked_fill(outside.scatter(-1, order, outside), float("-inf")).log_softmax(-1)
    return log_p


class StopStrings:
    """Ends a response at the token that completes one of ``strings`` in its decoded text: the sampler's stop.

    That token is kept (and its mu log-prob recorded), nothing after it is: the response ends there as at
    EOS, without one. Each step decodes only the last ``window`` tokens of a row, enough for the longest
    string (a token holds at least one byte, a character at most four), so the cost stays per token.
    """

    def __init__(self, strings, decode) -> None:
        self.strings, self.decode = tuple(strings), decode
        self.window = 4 * max(len(s) for s in self.strings) + 1

    def ended(self, tokens: list[torch.Tensor], alive: torch.Tensor) -> torch.Tensor:
        """[N] bool: alive rows whose latest token (``tokens[-1]``) completes a stop string."""
        tail = torch.stack(tokens[-self.window:], dim=1).tolist()  # [N, w]
        rows = alive.nonzero()[:, 0].tolist()
        hits = [row for row in rows if any(s in self.decode(tail[row]) for s in self.strings)]
        ended = torch.zeros_like(alive)
        ended[hits] = True
        return ended

    def cut(self, text: str) -> str:
        """``text`` up to the end of its first stop string (a token may carry characters past it)."""
        ends = [text.find(s) + len(s) for s in self.strings if s in text]
        return text[:min(ends)] if ends else text


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k_logprobs: int = 0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    *,
    eos_id: int,
    pad_id: int,
    ignore_eos: bool = False,
    stop: StopStrings | None = None,
) -> RolloutBatch:
    """Sample ``group_size`` responses for each prompt (token ids, no padding) from ``model``.

    Prompts are left-padded to a common length and repeated ``group_size`` times (rows of a group are
    consecutive). Each step samples from softmax(logits / temperature) restricted to the top-p nucleus,
    feeding the new tokens through the KV cache (``use_cache=False`` recomputes the full forward: the
    same samples for the same ``generator``, in fp32). A row ends with its EOS, which is part of the
    response; generation stops when every row has ended or after ``max_new_tokens``. ``ignore_eos``
    samples every row to ``max_new_tokens`` through any EOS (vLLM's flag of that name: throughput
    benchmarks that need equal lengths). ``stop`` ends a row at the token completing a stop string
    (:class:`StopStrings`). ``generator`` must live on the model's device.
    """
    check_generate_args(prompts, group_size, max_new_tokens, temperature, top_p, top_k_logprobs)
    device = next(model.parameters()).device
    N = len(prompts) * group_size
    unique_ids, unique_mask = left_pad(prompts, pad_id, device)  # [n, P]
    prompt_ids = unique_ids.repeat_interleave(group_size, dim=0)  # [N, P]
    prompt_mask = unique_mask.repeat_interleave(group_size, dim=0)
    group_index = torch.arange(len(prompts), device=device).repeat_interleave(group_size)  # [N]

    # the rows of a group share their prompt: one prefill per prompt, its cache and logits repeated G times
    cache = KVCache() if use_cache else None
    logits, cache = model(unique_ids, unique_mask, cache, logits_to_keep=1)  # [n, 1, V]
    logits = logits.repeat_interleave(group_size, dim=0)  # [N, 1, V]
    if cache is not None:
        cache.repeat_rows(group_size)
    if top_k_logprobs > logits.shape[-1]:
        raise ValueError(f"top_k_logprobs={top_k_logprobs} exceeds the vocabulary size {logits.shape[-1]}")
    tokens, masks, log_probs, topk_ids, topk_log_probs = [], [], [], [], []
    done = torch.zeros(N, dtype=torch.bool, device=device)  # [N] rows that have emitted EOS
    for step in range(max_new_tokens):
        if temperature == 0:  # greedy: the argmax; its log-prob is reported at temperature 1
            log_p = sampling_log_probs(logits[:, -1])  # [N, V]
            token = log_p.argmax(-1)  # [N]
        else:
            log_p = sampling_log_probs(logits[:, -1], temperature, top_p)  # [N, V]
            # finished rows still draw, so the generator advances the same way whatever the rows do
            token = sample_categorical(log_p.exp(), generator)  # [N]
        alive = ~done  # [N]
        tokens.append(token.masked_fill(done, pad_id))
        masks.append(alive.float())
        log_probs.append(log_p.gather(-1, token[:, None])[:, 0].masked_fill(done, 0.0))
        if top_k_logprobs:
            values, ids = log_p.topk(top_k_logprobs, dim=-1)  # [N, K]
            topk_ids.append(ids.masked_fill(done[:, None], pad_id))
            topk_log_probs.append(values.clamp(min=TOPK_LOG_PROB_FLOOR).masked_fill(done[:, None], 0.0))
        if not ignore_eos:
            done = done | (token == eos_id)
        if stop is not None:
            done = done | stop.ended(tokens, alive)
        if done.all() or step == max_new_tokens - 1:  # no forward for a token that will not be sampled
            break
        if use_cache:
            logits, cache = model(token[:, None], None, cache)  # [N, 1, V]
        else:  # recompute everything: the reference the cache must reproduce
            response_ids = torch.stack(tokens, dim=1)  # [N, t]
            logits, _ = model(torch.cat([prompt_ids, response_ids], dim=1),
                              torch.cat([prompt_mask, torch.ones_like(response_ids)], dim=1), logits_to_keep=1)

    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=torch.stack(tokens, dim=1),  # [N, T]
        response_mask=torch.stack(masks, dim=1),  # [N, T]
        rollout_log_prob=torch.stack(log_probs, dim=1),  # [N, T]
        group_index=group_index,
        rollout_topk_ids=torch.stack(topk_ids, dim=1) if top_k_logprobs else None,  # [N, T, K]
        rollout_topk_log_probs=torch.stack(topk_log_probs, dim=1) if top_k_logprobs else None,  # [N, T, K]
    )


def check_generate_args(prompts: list[list[int]], group_size: int, max_new_tokens: int, temperature: float,
                        top_p: float, top_k_logprobs: int) -> None:
    """The arguments every engine's generate refuses, with the same message (ValueError)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    if group_size < 1 or max_new_tokens < 1 or top_k_logprobs < 0:
        raise ValueError(f"need group_size >= 1, max_new_tokens >= 1, top_k_logprobs >= 0; got "
                         f"{group_size}, {max_new_tokens}, {top_k_logprobs}")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 (0: greedy) and 0 < top_p <= 1; got {temperature}, {top_p}")


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` [N, V], drawn by inverse CDF: one uniform per row, where torch.multinomial
    draws one exponential per vocabulary entry (83 ms for 64 rows x 49k tokens, 5% of a SmolLM2 step).
    A token of probability 0 is never drawn (``right=True``: the first index whose CDF exceeds the uniform)."""
    cdf = probs.cumsum(-1)  # [N, V]
    uniform = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]  # [N, 1]
    return torch.searchsorted(cdf, uniform, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)  # [N]


def left_pad(sequences: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [N, L] left-padded with pad_id, mask [N, L] long, 1 on real tokens)."""
    length = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(sequences), length, dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        ids[row, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, length - len(seq):] = 1
    return ids, mask


def make_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> RolloutBatch:
    """A batch of given (prompt, response) pairs, e.g. supervised targets; it has no mu (log-probs are 0)."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)  # [N, P]
    flipped_ids, flipped_mask = left_pad([r[::-1] for r in responses], pad_id)  # right padding, reversed
    response_ids, response_mask = flipped_ids.flip(1), flipped_mask.flip(1).float()  # [N, T]
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, torch.zeros_like(response_mask),
                        torch.arange(len(prompts)))

