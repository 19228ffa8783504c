"""Where mu comes from: the behavior policy (precision, lag) and the KV-cache sampler.

    behavior = BehaviorPolicy(policy, precision="bf16", lag=1)
    batch = behavior.generate(prompts, group_size=8, max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.pad_id)
    ...                                     # rewards, advantages
    out = sequence_log_probs(policy, batch)  # log pi of the response tokens, with gradients
    loss(log_prob=out.log_prob, rollout_log_prob=batch.rollout_log_prob, ...)
    optimizer.step(); behavior.sync(policy)

The behavior policy is a copy of the policy run the way an inference engine would run it: in another
precision (the training-inference mismatch) and/or with weights some optimizer steps old (asynchronous
RL). The mismatch is real arithmetic, not injected noise (``PRECISION_ROUNDS`` says what each rounds):

- bf16 / fp16: the whole copy runs in that dtype.
- fp8 / int8: as serving engines run W8A8 quantized models: the copy runs in bf16, and every Linear but the
  output head has its weights and inputs rounded through the 8-bit grid (simulated: CPUs have no fp8/int8
  matmul worth timing); the embedding and the output head stay bf16.
- fp8_all: the earlier, harsher simulation kept for the published sweeps: fp32 compute, every Linear rounded
  through e4m3 with one scale per tensor, the (tied) embedding and output head included.

The sampler's mu log-prob of a token is that of the distribution it actually sampled from: softmax of
logits / temperature, renormalised over the nucleus when top_p < 1. :func:`sequence_log_probs` computes
pi with the same temperature but without the nucleus, as trainers do, so top_p < 1 is itself a source of
mismatch.

vLLM's behavior policy (``rollout.backend=vllm``, drpo/rollout_vllm.py) has the same interface;
``drpo.policy.build_behavior`` picks the one a run config asks for.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from drpo.models.transformer import KVCache

PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8", "fp8_all")
PRECISION_ROUNDS = {
    "fp32": "nothing: the trainer's own numerics",
    "bf16": "every weight and activation to bfloat16 (8-bit mantissa)",
    "fp16": "every weight and activation to float16 (11-bit mantissa)",
    "fp8": "bf16 model; Linear weights (per tensor) and inputs (per token) to float8_e4m3, embedding and head bf16",
    "int8": "bf16 model; Linear weights (per output channel) and inputs (per token) to int8, embedding and head bf16",
    "fp8_all": "fp32 model; every Linear's weights (per tensor) and inputs (per token) to float8_e4m3, tied "
               "embedding and output head included",
}
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
INT8_MAX = 127
# top-k entries outside the top-p nucleus have probability 0; the losses require finite log-probs, and
# exp(-1e4) is exactly 0 in float32 while differences of such numbers stay finite
TOPK_LOG_PROB_FLOOR = -1e4


def round_fp8(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """x rounded through float8_e4m3fn, scaled so its max |value| (per tensor, or along ``dim``) maps to 448."""
    amax = x.abs().amax() if dim is None else x.abs().amax(dim, keepdim=True)
    scale = amax.float().clamp(min=1e-12) / FP8_MAX
    scaled = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX)  # exact division can land a hair above 448
    return (scaled.to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def round_int8(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x rounded to symmetric int8 with one scale per slice along ``dim`` (max |value| -> 127), dequantized."""
    scale = x.abs().amax(dim, keepdim=True).float().clamp(min=1e-12) / INT8_MAX
    return ((x.float() / scale).round().clamp(-INT8_MAX, INT8_MAX) * scale).to(x.dtype)


# (weights, inputs) of every Linear. Weights: fp8 per tensor, int8 per output channel. Inputs: one scale
# per token, so a row's logits never depend on the other rows of the batch (padding, cache vs no cache).
QUANTIZERS = {
    "fp8": (round_fp8, lambda x: round_fp8(x, dim=-1)),
    "fp8_all": (round_fp8, lambda x: round_fp8(x, dim=-1)),
    "int8": (lambda w: round_int8(w, dim=1), lambda x: round_int8(x, dim=-1)),
}
QUANTIZE_HEAD = ("fp8_all",)  # the other 8-bit modes keep the embedding and output head in bf16, as engines do


def quantized_linears(model: nn.Module, precision: str) -> list[nn.Linear]:
    """The Linear layers that ``precision`` rounds to 8 bits: all of them for fp8_all, else all but the output head.

    The output head is the Linear whose output size is the vocabulary (an Embedding's row count): it is tied
    to the embedding in both model families we run, and engines keep both in bf16.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if precision in QUANTIZE_HEAD:
        return linears
    vocab_sizes = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    return [m for m in linears if m.out_features not in vocab_sizes]


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


def sampling_log_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probs [..., V] of the distribution the sampler draws from: logits / temperature, then the nucleus.

    The nucleus keeps the most likely tokens until their mass reaches top_p (always at least one) and
    renormalises; tokens outside it get -inf.
    """
    log_p = (logits.float() / temperature).log_softmax(-1)  # [..., V]
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
    """Sample ``group_size`` responses per prompt from ``model`` (see :meth:`BehaviorPolicy.generate`)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    if group_size < 1 or max_new_tokens < 1 or top_k_logprobs < 0:
        raise ValueError(f"need group_size >= 1, max_new_tokens >= 1, top_k_logprobs >= 0; got "
                         f"{group_size}, {max_new_tokens}, {top_k_logprobs}")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 (0: greedy) and 0 < top_p <= 1; got {temperature}, {top_p}")
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


class BehaviorPolicy:
    """The policy run in ``precision``, serving the weights of ``lag`` syncs ago.

    In another precision, or with a lag, it is a copy of the policy (``copy.deepcopy``, made once). With
    lag > 0 each :meth:`sync` stores the policy's state on the CPU, rounded to the copy's precision (what
    loading it would round it to: bf16 for bf16/fp8/int8, fp16, fp32 for fp32/fp8_all), in a queue of the
    last ``lag + 1`` states and loads the oldest; until ``lag`` syncs have happened the oldest is the initial
    policy, and :meth:`state_dict` holds the queue, so a trainer checkpoint resumes with exactly the stale
    weights it had. That queue costs (lag + 1) x parameters x 2 bytes in bf16, in memory and in each
    checkpoint file. With lag 0 nothing is stored: each sync loads the policy's weights
    into the copy directly, and when the copy would equal the policy (fp32, or the policy's own half
    dtype) there is no copy at all: mu is sampled from the policy's own module, as a colocated engine
    shares the trainer's weights.
    """

    def __init__(self, policy: nn.Module, precision: str = "fp32", lag: int = 0) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown rollout precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.precision, self.lag = precision, lag
        self.policy = policy
        # the trainer's own numerics (fp32 means "as the policy runs": a bf16 policy stays bf16) and no lag: a
        # copy would equal the policy
        dtype = next(policy.parameters()).dtype
        self.shares_weights = lag == 0 and (precision == "fp32" or HALF_DTYPES.get(precision) == dtype)
        self.model = policy if self.shares_weights else copy.deepcopy(policy).eval().requires_grad_(False)
        if precision in ("bf16", "fp16", "fp8", "int8") and not self.shares_weights:
            self.model.to(HALF_DTYPES.get(precision, torch.bfloat16))  # fp8/int8: a bf16 engine
        self._quantized: list[nn.Linear] = []
        if precision in QUANTIZERS:
            round_input = QUANTIZERS[precision][1]
            self._quantized = quantized_linears(self.model, precision)
            for module in self._quantized:
                module.register_forward_pre_hook(lambda _, args: (round_input(args[0]), *args[1:]))
        self._states: deque[dict[str, torch.Tensor]] = deque([_cpu_state(policy, self.model)] if lag else [],
                                                             maxlen=lag + 1)
        self._serve()

    def sync(self, policy: nn.Module) -> None:
        """Record the policy's new weights (after an optimizer step) and serve those of ``lag`` syncs ago."""
        self.policy = policy
        if self.lag:
            self._states.append(_cpu_state(policy, self.model))
        self._serve()

    def _serve(self) -> None:
        if self.lag:
            self._load(self._states[0])
        elif not self.shares_weights:
            self._load(self.policy.state_dict())

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)  # casts to the copy's dtype for bf16/fp16
        if self.precision in QUANTIZERS:
            round_weight = QUANTIZERS[self.precision][0]
            weights = {id(m.weight): m.weight for m in self._quantized}
            with torch.no_grad():
                for weight in weights.values():  # tied weights are rounded once
                    weight.copy_(round_weight(weight))

    def state_dict(self) -> dict:
        return {"precision": self.precision, "lag": self.lag, "states": [dict(s) for s in self._states]}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the queue of stale weights with lag > 0; with lag 0, the weights of the (already restored) policy."""
        states = restore_lagged_states(state, self.precision, self.lag)
        if self.lag:
            self._states = states
        self._serve()

    def generate(
        self,
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
        """Sample ``group_size`` responses for each prompt (token ids, no padding) with the behavior weights.

        Prompts are left-padded to a common length and repeated ``group_size`` times (rows of a group are
        consecutive). Each step samples from softmax(logits / temperature) restricted to the top-p nucleus,
        feeding the new tokens through the KV cache (``use_cache=False`` recomputes the full forward: the
        same samples for the same ``generator``, in fp32). A row ends with its EOS, which is part of the
        response; generation stops when every row has ended or after ``max_new_tokens``. ``ignore_eos``
        samples every row to ``max_new_tokens`` through any EOS (vLLM's flag of that name: throughput
        benchmarks that need equal lengths). ``stop`` ends a row at the token completing a stop string
        (:class:`StopStrings`). ``generator`` must live on the model's device.
        """
        return generate(self.model, prompts, group_size, max_new_tokens, temperature, top_p, top_k_logprobs,
                        use_cache, generator, eos_id=eos_id, pad_id=pad_id, ignore_eos=ignore_eos, stop=stop)


def restore_lagged_states(state: dict, precision: str, lag: int) -> deque[dict[str, torch.Tensor]]:
    """The queue of lagged weights in a behavior policy's ``state_dict``, once it is known to match ``precision``
    and ``lag`` (a checkpoint resumed under other rollout settings would serve the wrong weights)."""
    if (state["precision"], state["lag"]) != (precision, lag):
        raise ValueError(f"behavior state was saved with precision={state['precision']!r}, lag={state['lag']}; "
                         f"this behavior policy has precision={precision!r}, lag={lag}")
    return deque((_clone_state(s) for s in state["states"]), maxlen=lag + 1)


def _clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` in which a tensor stored under two names (a tied weight) stays one tensor."""
    clones: dict[int, torch.Tensor] = {}
    for value in state.values():
        if id(value) not in clones:
            clones[id(value)] = value.clone()
    return {k: clones[id(v)] for k, v in state.items()}


def _cpu_state(model: nn.Module, like: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state on the CPU, each tensor in the dtype of ``like``'s (the behavior copy, which loading it
    would round it to anyway). A tied weight (one tensor under two names) is copied once, and saved once."""
    dtypes = {k: v.dtype for k, v in like.state_dict().items()}
    copies: dict[tuple, torch.Tensor] = {}
    state = {}
    for k, v in model.state_dict().items():
        tensor = (v.data_ptr(), v.shape, v.stride(), dtypes[k])
        if tensor not in copies:
            copies[tensor] = v.detach().to("cpu", dtypes[k], copy=True)
        state[k] = copies[tensor]
    return state
