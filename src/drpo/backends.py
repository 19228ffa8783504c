"""Where a run's policy pi and behavior policy mu are built: the one module that picks their backends.

    policy = build_policy(config)              # pi, a drpo.models.policy.Policy: the built-in transformer
                                               #   warmed up on the task (drpo/warmup.py), or a pretrained
                                               #   model (hf:PATH, gguf:FILE, smollm2-135m; drpo/models/hf_policy.py)
    behavior = build_behavior(config, policy)  # mu, a drpo.behavior.BehaviorPolicy of rollout.engine: the native
                                               #   copy in rollout.precision, rollout.lag syncs stale
                                               #   (drpo/behavior/native.py), vLLM (drpo/behavior/vllm.py) or
                                               #   llama.cpp (drpo/behavior/llamacpp.py); each samples a RolloutBatch

The backends import none of this module, so each can be read (and imported) on its own.
"""

from __future__ import annotations

from drpo.behavior import ENGINES, BehaviorPolicy
from drpo.behavior.native import NativeBehavior
from drpo.behavior.vllm import VLLMBehavior
from drpo.models.gguf import is_pretrained_name, resolve_model_dir
from drpo.models.hf_policy import build_hf_policy
from drpo.models.policy import Policy
from drpo.warmup import build_builtin_policy


def build_policy(config, console=None, task=None) -> Policy:
    """The policy of ``config.model``: pretrained names load as they are, the built-in model is warmed up.

    ``task``: a task built by the caller (drpo.api.train: task=custom with Python objects) instead of config.task's.
    """
    build = build_hf_policy if is_pretrained_name(config.model.name) else build_builtin_policy
    policy = build(config, console=console, task=task)
    policy.stop = tuple(config.rollout.stop)
    return policy


def build_behavior(config, policy: Policy) -> BehaviorPolicy:
    """The behavior policy of ``config.rollout.engine``: the native copy (any model), vLLM (hf: models, GPU) or
    llama.cpp (CPU)."""
    rollout = config.rollout
    if rollout.engine == "native":
        return NativeBehavior(policy.model, mode=rollout.precision, lag=rollout.lag)
    if rollout.engine == "llamacpp":
        # lazy: an optional dependency (llama-cpp-python), imported only when a run asks for it
        from drpo.behavior.llamacpp import LlamaCppBehavior

        return LlamaCppBehavior(policy, mode=rollout.precision, lag=rollout.lag, seed=config.seed,
                                threads=rollout.llamacpp_threads)
    if rollout.engine == "vllm":
        if not is_pretrained_name(config.model.name):
            raise ValueError("rollout.engine=vllm needs a Hugging Face model (model=hf:PATH); the built-in "
                             "transformer runs with rollout.engine=native")
        task = policy.task
        return VLLMBehavior(policy.model, resolve_model_dir(config.model.name), mode=rollout.precision,
                            lag=rollout.lag, gpu_memory=rollout.vllm_gpu_memory, seed=config.seed,
                            max_model_len=task.max_prompt_len + task.max_response_len)
    raise ValueError(f"unknown rollout.engine {rollout.engine!r}; valid: {', '.join(ENGINES)}")
