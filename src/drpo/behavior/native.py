"""The native engine (``rollout.engine=native``): mu sampled by the trainer's own model in another precision.

    behavior = NativeBehavior(policy, mode="bf16", lag=1)
    batch = behavior.generate(prompts, group_size=8, max_new_tokens=6,
                              sampling=SamplingParams(eos_id=tok.eos_id, pad_id=tok.pad_id))
    ...                                     # rewards, advantages
    out = sequence_log_probs(policy, batch)  # log pi of the response tokens, with gradients (drpo.models.log_probs)
    loss(log_prob=out.log_prob, rollout_log_prob=batch.rollout_log_prob, ...)
    optimizer.step(); behavior.sync(policy)

The behavior policy is a copy of the policy run the way an inference engine would run it: in another
precision (the training-inference mismatch) and/or with weights some optimizer steps old (asynchronous
RL). The mismatch is real arithmetic, not injected noise (``drpo.behavior.modes.ROLLOUT_MODES[mode].rounds``
says what each mode rounds):

- bf16 / fp16: the whole copy runs in that dtype.
- fp8 / int8: as serving engines run W8A8 quantized models: the copy runs in bf16, and every Linear but the
  output head has its weights and inputs rounded through the 8-bit grid (simulated: CPUs have no fp8/int8
  matmul worth timing); the embedding and the output head stay bf16.
- fp8_all: the earlier, harsher simulation kept for the published sweeps: fp32 compute, every Linear rounded
  through e4m3 with one scale per tensor, the (tied) embedding and output head included.

It samples with drpo/models/sampling.py, whose mu log-prob of a token is that of the distribution it
actually sampled from: softmax of logits / temperature, renormalised over the nucleus when top_p < 1.
:func:`drpo.models.log_probs.sequence_log_probs` computes pi with the same temperature but without the
nucleus, as trainers do, so top_p < 1 is itself a source of mismatch.

The other engines (vLLM: drpo/behavior/vllm.py; llama.cpp: drpo/behavior/llamacpp.py) implement the same
:class:`drpo.behavior.BehaviorPolicy` and keep their stale weights with the same :class:`LaggedWeights`;
``drpo.backends.build_behavior`` picks the one a run config asks for (``rollout.engine``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import torch
from torch import nn

from drpo.behavior.base import SamplingParams
from drpo.behavior.lagged import LaggedWeights, ServesLaggedWeights
from drpo.behavior.modes import ROLLOUT_MODES, modes_of
from drpo.models.sampling import RolloutBatch, generate

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
INT8_MAX = 127


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


def quantized_linears(model: nn.Module, mode: str) -> list[nn.Linear]:
    """The Linear layers that ``mode`` rounds to 8 bits: all of them for fp8_all, else all but the output head.

    The output head is the Linear whose output size is the vocabulary (an Embedding's row count): it is tied
    to the embedding in both model families we run, and engines keep both in bf16.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if mode in QUANTIZE_HEAD:
        return linears
    vocab_sizes = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    return [m for m in linears if m.out_features not in vocab_sizes]


def sampler_keywords(sampling: SamplingParams) -> dict[str, Any]:
    """``sampling`` as the keyword arguments of :func:`drpo.models.sampling.generate` (the fields share its names;
    not ``dataclasses.asdict``, which would deep-copy the generator and the stop strings)."""
    return {field.name: getattr(sampling, field.name) for field in dataclasses.fields(sampling)}


class NativeBehavior(ServesLaggedWeights):
    """The policy run in ``mode``, serving the weights of ``lag`` syncs ago (:class:`LaggedWeights`).

    In another precision, or with a lag, it is a copy of the policy (``copy.deepcopy``, made once); lagged
    weights are stored rounded to the copy's precision (bf16 for bf16/fp8/int8, fp16, fp32 for fp32/fp8_all).
    With lag 0 each sync loads the policy's weights into the copy directly, and when the copy would equal the
    policy (fp32, or the policy's own half dtype) there is no copy at all: mu is sampled from the policy's own
    module, as a colocated engine shares the trainer's weights.
    """

    engine = "native"

    def __init__(self, policy: nn.Module, mode: str = "fp32", lag: int = 0) -> None:
        if mode not in modes_of(self.engine):
            raise ValueError(f"rollout mode {mode!r} is not run by the native engine; it runs "
                             f"{', '.join(modes_of(self.engine))}")
        self.mode, self.lag = mode, lag
        self.policy = policy
        # the trainer's own numerics (fp32 means "as the policy runs": a bf16 policy stays bf16) and no lag: a
        # copy would equal the policy
        dtype = next(policy.parameters()).dtype
        self.shares_weights = lag == 0 and (mode == "fp32" or HALF_DTYPES.get(mode) == dtype)
        self.model = policy if self.shares_weights else copy.deepcopy(policy).eval().requires_grad_(False)
        if mode in ("bf16", "fp16", "fp8", "int8") and not self.shares_weights:
            self.model.to(HALF_DTYPES.get(mode, torch.bfloat16))  # fp8/int8: a bf16 engine
        self._quantized: list[nn.Linear] = []
        if mode in QUANTIZERS:
            round_input = QUANTIZERS[mode][1]
            self._quantized = quantized_linears(self.model, mode)
            for module in self._quantized:
                module.register_forward_pre_hook(lambda _, args: (round_input(args[0]), *args[1:]))
        self.weights = LaggedWeights(policy, mode, lag, functools.partial(_cpu_state, like=self.model))
        self._serve()

    def _serve(self) -> None:
        state = self.weights.served()
        if state is not None:
            self._load(state)
        elif not self.shares_weights:
            self._load(self.policy.state_dict())

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)  # casts to the copy's dtype for bf16/fp16
        if self.mode in QUANTIZERS:
            round_weight = QUANTIZERS[self.mode][0]
            weights = {id(m.weight): m.weight for m in self._quantized}
            with torch.no_grad():
                for weight in weights.values():  # tied weights are rounded once
                    weight.copy_(round_weight(weight))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "mode": self.mode, "rounds": ROLLOUT_MODES[self.mode].rounds, "lag": self.lag,
                "shares_weights": self.shares_weights}

    def generate(self, prompts: list[list[int]], group_size: int, max_new_tokens: int,
                 sampling: SamplingParams) -> RolloutBatch:
        """``group_size`` responses for each prompt sampled with the behavior weights by
        :func:`drpo.models.sampling.generate` (KV cache on)."""
        return generate(self.model, prompts, group_size, max_new_tokens, **sampler_keywords(sampling))


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
