"""Where a run's policy pi and behavior policy mu are built: the one module that picks their backends.

    policy = build_policy(config)              # pi, a drpo.models.policy.Policy: the built-in transformer
                                               #   warmed up on the task (drpo/warmup.py), or a pretrained
                                               #   model (hf:PATH, gguf:FILE, smollm2-135m; drpo/models/hf_policy.py)
    behavior = build_behavior(config, policy)  # mu: a copy in rollout.precision, rollout.lag syncs stale
                                               #   (drpo/rollout.py), or vLLM (rollout.backend=vllm;
                                               #   drpo/rollout_vllm.py); both sample a RolloutBatch with mu

The backends import none of this module, so each can be read (and imported) on its own.
"""

from __future__ import annotations

from drpo.models.gguf import is_pretrained_name, resolve_model_dir
from drpo.models.hf_policy import build_hf_policy
from drpo.models.policy import Policy
from drpo.rollout import BehaviorPolicy
from drpo.rollout_vllm import VLLMBehaviorPolicy
from drpo.warmup import build_builtin_policy


def build_policy(config, console=None, task=None) -> Policy:
    """The policy of ``config.model``: pretrained names load as they are, the built-in model is warmed up.

    ``task``: a task built by the caller (drpo.api.train: task=custom with Python objects) instead of config.task's.
    """
    build = build_hf_policy if is_pretrained_name(config.model.name) else build_builtin_policy
    policy = build(config, console=console, task=task)
    policy.stop = tuple(config.rollout.stop)
    return policy


def build_behavior(config, policy: Policy) -> BehaviorPolicy | VLLMBehaviorPolicy:
    """The behavior policy of ``config.rollout``: the native copy (any model) or vLLM (hf: models, GPU)."""
    rollout = config.rollout
    if rollout.backend == "native":
        return BehaviorPolicy(policy.model, precision=rollout.precision, lag=rollout.lag)
    if not is_pretrained_name(config.model.name):
        raise ValueError("rollout.backend=vllm needs a Hugging Face model (model=hf:PATH); the built-in "
                         "transformer runs with rollout.backend=native")
    task = policy.task
    return VLLMBehaviorPolicy(policy.model, resolve_model_dir(config.model.name), precision=rollout.precision,
                              lag=rollout.lag, gpu_memory=rollout.vllm_gpu_memory, seed=config.seed,
                              max_model_len=task.max_prompt_len + task.max_response_len)
