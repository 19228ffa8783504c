"""Optional vLLM engine (``rollout.engine=vllm``): mu sampled and scored by vLLM on a GPU.

    behavior = build_behavior(config, policy)   # drpo.backends: this VLLMBehavior for rollout.engine=vllm
    batch = behavior.generate(prompts, group_size=8, max_new_tokens=1024,
                              sampling=SamplingParams(eos_id=tok.eos_id, pad_id=tok.pad_id))
    ...                                         # the trainer's step, unchanged
    behavior.sync(policy.model)                 # push the new weights (or those of `lag` syncs ago) into vLLM

:class:`VLLMBehavior` implements :class:`drpo.behavior.BehaviorPolicy` (generate, sync, describe,
state_dict, load_state_dict) and returns the same :class:`RolloutBatch` as the native engine. The mu
log-probs are vLLM's own: the engine runs with ``logprobs_mode="processed_logprobs"``, so each token's
log-prob is that of the distribution vLLM sampled from (after temperature and top-p), exactly what the
native sampler records. The mismatch pi - mu is then the real one between vLLM's kernels and the
trainer's forward.

The engine lives in the training process (``distributed_executor_backend="external_launcher"``, as TRL's
colocate mode), takes ``rollout.vllm_gpu_memory`` of the GPU, and receives weights by
``model.load_weights`` after every optimizer step (LoRA adapters are merged first). Modes: fp32, bf16,
fp16 (vLLM's dtype; drpo.behavior.modes). fp8/int8 are not offered: vLLM quantizes online at load time and
a weight reload into a quantized engine is not a stable vLLM API; the native engine's simulated fp8/int8
covers them.

vLLM is optional: nothing here imports it until a VLLMBehavior is built, and the tests skip
cleanly without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from drpo.behavior.base import SamplingParams
from drpo.behavior.lagged import LaggedWeights, ServesLaggedWeights
from drpo.behavior.modes import ROLLOUT_MODES, modes_of
from drpo.constants import TORCH_DTYPES
from drpo.models.hf import hf_state
from drpo.models.sampling import TOPK_LOG_PROB_FLOOR, RolloutBatch, left_pad


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _import_vllm():
    try:
        import vllm  # lazy: optional dependency (vLLM, on a CUDA machine)
    except ImportError as error:
        raise ImportError("rollout.engine=vllm needs vLLM on a CUDA machine: pip install vllm (it brings its own "
                          "torch build); or use rollout.engine=native") from error
    return vllm


class VLLMBehavior(ServesLaggedWeights):
    """mu served by an in-process vLLM engine holding the policy's weights of ``lag`` syncs ago."""

    engine = "vllm"

    def __init__(self, policy: nn.Module, path: str, mode: str = "bf16", lag: int = 0,
                 gpu_memory: float = 0.35, seed: int = 0, max_model_len: int | None = None) -> None:
        if mode not in modes_of(self.engine):
            raise ValueError(f"rollout.engine=vllm supports rollout.precision {', '.join(modes_of(self.engine))}; "
                             f"got {mode!r} (use rollout.engine=native for simulated fp8/int8)")
        vllm = _import_vllm()
        self.mode, self.lag = mode, lag
        self.dtype = getattr(torch, TORCH_DTYPES[mode])  # the engine's: lagged copies are stored in it
        self.policy = policy
        self.gpu_memory, self.max_model_len = gpu_memory, max_model_len
        self.weights = LaggedWeights(policy, mode, lag, functools.partial(hf_state, cpu=True, dtype=self.dtype))
        # a one-process "distributed" engine inside this process, so load_weights reaches the model directly
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "localhost")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        self.llm = vllm.LLM(model=str(path), dtype=TORCH_DTYPES[mode], gpu_memory_utilization=gpu_memory,
                            max_model_len=max_model_len, seed=seed, enable_prefix_caching=True,
                            logprobs_mode="processed_logprobs", distributed_executor_backend="external_launcher")
        self._serve()

    # ------------------------------------------------------------------------------------------- weights
    def _serve(self) -> None:
        state = self.weights.served()
        self._push(state if state is not None else hf_state(self.policy))

    def _push(self, state: dict[str, torch.Tensor]) -> None:
        runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        runner_model.load_weights(state.items())
        self.llm.reset_prefix_cache()  # cached prompt keys/values belong to the old weights

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "mode": self.mode, "rounds": ROLLOUT_MODES[self.mode].rounds, "lag": self.lag,
                "gpu_memory": self.gpu_memory, "max_model_len": self.max_model_len}

    # ------------------------------------------------------------------------------------------- sampling
    def generate(self, prompts: list[list[int]], group_size: int, max_new_tokens: int,
                 sampling: SamplingParams) -> RolloutBatch:
        """``group_size`` samples per prompt from vLLM, as :meth:`drpo.behavior.BehaviorPolicy.generate` (stop
        strings are the native sampler's only); ``sampling.generator`` draws vLLM's seed."""
        if sampling.stop is not None:
            raise ValueError("rollout.stop applies to the native sampler, not to rollout.engine=vllm")
        vllm = _import_vllm()
        generator = sampling.generator
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        params = vllm.SamplingParams(n=group_size, temperature=sampling.temperature, top_p=sampling.top_p,
                                     max_tokens=max_new_tokens, logprobs=sampling.top_k_logprobs,
                                     stop_token_ids=[] if sampling.ignore_eos else [sampling.eos_id],
                                     ignore_eos=sampling.ignore_eos, seed=seed, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        device = next(self.policy.parameters()).device
        return batch_from_outputs(prompts, [[(o.token_ids, o.logprobs) for o in out.outputs] for out in outputs],
                                  sampling.top_k_logprobs, pad_id=sampling.pad_id, device=device)


def batch_from_outputs(prompts: list[list[int]], samples: Sequence[Sequence[tuple]], top_k_logprobs: int,
                       *, pad_id: int, device=None) -> RolloutBatch:
    """A RolloutBatch from vLLM's samples: per prompt, ``group_size`` (token_ids, logprobs) pairs.

    ``logprobs`` is vLLM's list (one per generated token) of {token_id: Logprob(logprob, rank, ...)} with
    the sampled token and the top ``top_k_logprobs`` tokens (rank 1 = most likely).
    """
    group_size = len(samples[0])
    if any(len(s) != group_size for s in samples) or len(samples) != len(prompts):
        raise ValueError("vLLM returned a different number of samples than requested")
    rows = [sample for per_prompt in samples for sample in per_prompt]  # rows of a group are consecutive
    N, T = len(rows), max(1, max(len(token_ids) for token_ids, _ in rows))
    prompt_ids, prompt_mask = left_pad([p for p in prompts for _ in range(group_size)], pad_id, device)  # [N, P]
    response_ids = torch.full((N, T), pad_id, dtype=torch.long)  # [N, T]
    response_mask = torch.zeros(N, T)  # [N, T]
    log_prob = torch.zeros(N, T)  # [N, T]
    topk_ids = torch.full((N, T, top_k_logprobs), pad_id, dtype=torch.long)  # [N, T, K]
    topk_log_probs = torch.zeros(N, T, top_k_logprobs)  # [N, T, K]
    for row, (token_ids, logprobs) in enumerate(rows):
        for t, token in enumerate(token_ids):
            response_ids[row, t] = token
            response_mask[row, t] = 1.0
            log_prob[row, t] = logprobs[t][token].logprob
            if top_k_logprobs:
                ranked = sorted((item.rank, token_id, item.logprob) for token_id, item in logprobs[t].items()
                                if item.rank is not None and item.rank <= top_k_logprobs)
                for k, (_, token_id, value) in enumerate(ranked[:top_k_logprobs]):
                    topk_ids[row, t, k] = token_id
                    topk_log_probs[row, t, k] = max(value, TOPK_LOG_PROB_FLOOR)  # -inf outside the nucleus
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids.to(device),
        response_mask=response_mask.to(device), rollout_log_prob=log_prob.to(device),
        group_index=torch.arange(len(prompts), device=device).repeat_interleave(group_size),
        rollout_topk_ids=topk_ids.to(device) if top_k_logprobs else None,
        rollout_topk_log_probs=topk_log_probs.to(device) if top_k_logprobs else None,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
