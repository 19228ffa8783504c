"""Where mu comes from: the behavior policy (precision, lag) that runs the sampler.

    behavior = BehaviorPolicy(policy, precision="bf16", lag=1)
    batch = behavior.generate(prompts, group_size=8, max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.pad_id)
    ...                                     # rewards, advantages
    out = sequence_log_probs(policy, batch)  # log pi of the response tokens, with gradients (drpo.models.log_probs)
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

It samples with drpo/models/sampling.py, whose mu log-prob of a token is that of the distribution it
actually sampled from: softmax of logits / temperature, renormalised over the nucleus when top_p < 1.
:func:`drpo.models.log_probs.sequence_log_probs` computes pi with the same temperature but without the
nucleus, as trainers do, so top_p < 1 is itself a source of mismatch.

vLLM's behavior policy (``rollout.backend=vllm``, drpo/rollout_vllm.py) has the same interface and keeps its
stale weights with the same :class:`LaggedWeights`; ``drpo.backends.build_behavior`` picks the one a run
config asks for.
"""

from __future__ import annotations

import copy
import functools
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from drpo.constants import PRECISIONS
from drpo.models.sampling import RolloutBatch, generate

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


class LaggedWeights:
    """The policy's weights of ``lag`` syncs ago, kept for a behavior policy of either backend (native, vLLM).

    ``snapshot(policy)`` copies the policy's weights as the backend loads them (on the CPU, in the dtype loading
    would round them to anyway). With lag > 0 each :meth:`sync` stores a snapshot in a queue of the last
    ``lag + 1`` and :meth:`served` is the oldest; until ``lag`` syncs have happened that is the initial policy.
    :meth:`state_dict` holds the queue, so a trainer checkpoint resumes with exactly the stale weights it had;
    it costs (lag + 1) x parameters x 2 bytes in bf16, in memory and in each checkpoint file. With lag 0
    nothing is stored and :meth:`served` is None: the backend serves the policy's current weights.
    """

    def __init__(self, policy: nn.Module, precision: str, lag: int,
                 snapshot: Callable[[nn.Module], dict[str, torch.Tensor]]) -> None:
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.precision, self.lag, self.snapshot = precision, lag, snapshot
        self.states: deque[dict[str, torch.Tensor]] = deque([snapshot(policy)] if lag else [], maxlen=lag + 1)

    def sync(self, policy: nn.Module) -> None:
        """Record the policy's new weights (after an optimizer step)."""
        if self.lag:
            self.states.append(self.snapshot(policy))

    def served(self) -> dict[str, torch.Tensor] | None:
        """The weights to serve now: those of ``lag`` syncs ago; None with lag 0 (the policy's own)."""
        return self.states[0] if self.lag else None

    def state_dict(self) -> dict:
        return {"precision": self.precision, "lag": self.lag, "states": [dict(s) for s in self.states]}

    def load_state_dict(self, state: dict) -> None:
        """The queue of a :meth:`state_dict`, once it is known to match ``precision`` and ``lag`` (a checkpoint
        resumed under other rollout settings would serve the wrong weights)."""
        if (state["precision"], state["lag"]) != (self.precision, self.lag):
            raise ValueError(f"behavior state was saved with precision={state['precision']!r}, lag={state['lag']}; "
                             f"this behavior policy has precision={self.precision!r}, lag={self.lag}")
        self.states = deque((_clone_state(s) for s in state["states"]), maxlen=self.lag + 1)


class BehaviorPolicy:
    """The policy run in ``precision``, serving the weights of ``lag`` syncs ago (:class:`LaggedWeights`).

    In another precision, or with a lag, it is a copy of the policy (``copy.deepcopy``, made once); lagged
    weights are stored rounded to the copy's precision (bf16 for bf16/fp8/int8, fp16, fp32 for fp32/fp8_all).
    With lag 0 each sync loads the policy's weights into the copy directly, and when the copy would equal the
    policy (fp32, or the policy's own half dtype) there is no copy at all: mu is sampled from the policy's own
    module, as a colocated engine shares the trainer's weights.
    """

    def __init__(self, policy: nn.Module, precision: str = "fp32", lag: int = 0) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown rollout precision {precision!r}; valid: {', '.join(PRECISIONS)}")
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
        self.weights = LaggedWeights(policy, precision, lag, functools.partial(_cpu_state, like=self.model))
        self._serve()

    def sync(self, policy: nn.Module) -> None:
        """Record the policy's new weights (after an optimizer step) and serve those of ``lag`` syncs ago."""
        self.policy = policy
        self.weights.sync(policy)
        self._serve()

    def _serve(self) -> None:
        state = self.weights.served()
        if state is not None:
            self._load(state)
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
        return self.weights.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume: the queue of stale weights with lag > 0; with lag 0, the weights of the (already restored) policy."""
        self.weights.load_state_dict(state)
        self._serve()

    def generate(self, prompts: list[list[int]], group_size: int, max_new_tokens: int, **sampling) -> RolloutBatch:
        """``group_size`` responses for each prompt sampled with the behavior weights; ``sampling``: the keyword
        arguments of :func:`drpo.models.sampling.generate` (temperature, top_p, generator, eos_id, pad_id, ...)."""
        return generate(self.model, prompts, group_size, max_new_tokens, **sampling)


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
