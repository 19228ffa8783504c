"""verl's real actor update on CPU, next to the same computation outside verl.

    python tests/verl_cpu_update.py   # prints one line: RESULT {json}

The path is verl 0.9's own: ActorRolloutRefWorker.update_actor -> TrainingWorker.train_mini_batch ->
the FSDP2 engine (forward, backward per micro-batch, grad clip, AdamW step) ->
verl.workers.utils.losses.ppo_loss -> get_policy_loss_fn(loss_mode), our loss found through the
`verl.plugins` entry point. tests/test_integration_verl.py runs this file in a subprocess because it
sets process-wide state: verl's platform, a gloo process group, and TRL hidden (verl's engine cannot
be built while TRL 1.x is importable; see drpo.integrations.verl.trl_conflict).

What it takes to run verl's GPU engine on a CPU, and why:
- verl has no CPU platform, so PlatformCPU below is handed to verl's own `set_platform` before any verl
  module reads the device name at import time;
- the FSDP engine registers for cuda / npu only; VERL_ENGINE_DEVICE=cuda (verl's override) selects it;
- strategy fsdp2 (FSDP1 insists on a GPU), fp32 everywhere (no bf16 autocast), sdpa attention,
  use_remove_padding=false (the packed path needs flash-attention), torch.compile off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile

MICRO_BATCH = 2  # 4 sequences in one mini-batch: two micro-batches, so gradients accumulate
HORIZON = 8  # loss_scale_factor of the seq-mean-token-sum-norm case

# loss_mode -> (verl actor overrides, the same loss in drpo.losses terms, verl's loss_agg_mode)
CASES = {
    "drpo": (["actor_rollout_ref.actor.clip_ratio=0.15"], {"delta": 0.15}, "token-mean"),
    "dppo_binary_tv": (["actor_rollout_ref.actor.clip_ratio_low=0.1", "actor_rollout_ref.actor.clip_ratio_high=0.2",
                        "actor_rollout_ref.actor.clip_ratio_c=20.0", f"actor_rollout_ref.actor.loss_scale_factor={HORIZON}"],
                       {"delta_low": 0.1, "delta_high": 0.2, "trunc": 20.0}, "seq-mean-token-sum-norm"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_platform():
    """A verl platform for the CPU: device 'cpu', gloo, no device memory to report."""
    import torch
    from verl.plugin.platform.platform_base import PlatformBase

    class CPUDevice:
        """torch.cpu plus the torch.cuda calls verl's engine makes (memory statistics, seeding)."""

        def __getattr__(self, name):
            return getattr(torch.cpu, name)

        def max_memory_allocated(self, *args):
            return 0

        max_memory_reserved = memory_allocated = memory_reserved = max_memory_allocated

        def mem_get_info(self, *args):
            return 0, 0

        def empty_cache(self):
            pass

        def get_device_name(self, *args):
            return "CPU"

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        manual_seed_all = manual_seed

    class PlatformCPU(PlatformBase):
        device_name = vendor_name = "cpu"
        device_module = CPUDevice()

        def is_available(self):
            return True

        def current_device(self):
            return "cpu"  # verl moves modules to get_device_id(): an int would mean an accelerator

        def device_count(self):
            return 1

        def set_device(self, device_index):
            pass

        def synchronize(self, device_index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        manual_seed_all = manual_seed

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, device_index=0):
            return None, None

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextlib.contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        def profiler_stop(self):
            pass

        def ray_resource_name(self):
            return "CPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None

    return PlatformCPU()


def rollout_batch():
    """4 sequences as verl's trainer holds them: left-padded prompts, right-padded responses, mu, A."""
    import torch

    g = torch.Generator().manual_seed(0)
    batch, prompt_width, response_width = 4, 3, 5
    prompt_mask = torch.arange(prompt_width)[None] >= (prompt_width - torch.tensor([3, 2, 3, 1]))[:, None]
    response_mask = torch.arange(response_width)[None] < torch.tensor([5, 3, 1, 4])[:, None]  # [B, R]
    prompts = torch.zeros(batch, prompt_width, dtype=torch.long)
    responses = torch.zeros(batch, response_width, dtype=torch.long)
    prompts[prompt_mask] = torch.randint(3, 13, (int(prompt_mask.sum()),), generator=g)
    responses[response_mask] = torch.randint(3, 13, (int(response_mask.sum()),), generator=g)
    attention_mask = torch.cat([prompt_mask, response_mask], 1).long()  # [B, P + R]
    return {
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
        "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_mask": response_mask.long(),
        # mu far from the random model's pi, so trust regions act (corrective and dropped tokens)
        "old_log_probs": -torch.rand(batch, response_width, generator=g) * 3 * response_mask,
        "advantages": torch.randn(batch, generator=g)[:, None].expand(batch, response_width).clone(),
    }


def verl_update(config_dir: str, model_path: str, loss_mode: str, overrides: list[str], agg_mode: str) -> dict:
    """One update_actor call of a freshly built actor worker; verl's metrics as plain floats."""
    from hydra import compose, initialize_config_dir
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding

    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={model_path}",
            "actor_rollout_ref.model.use_remove_padding=false",
            "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
            "actor_rollout_ref.actor.strategy=fsdp2",
            "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
            "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: fp32, reduce_dtype: fp32, "
            "buffer_dtype: fp32}",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={MICRO_BATCH}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO_BATCH}",
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}",
            f"actor_rollout_ref.actor.loss_agg_mode={agg_mode}",
            *overrides,
        ])
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
    worker.init_model()
    data = rollout_batch()
    batch_size = data["prompts"].shape[0]
    data = left_right_2_no_padding(TensorDict(data, batch_size=[batch_size]))  # as verl's trainer does
    # what verl's trainer attaches to an update_actor call: one mini-batch, one epoch, in order
    tu.assign_non_tensor(data, calculate_entropy=False, global_batch_size=batch_size, mini_batch_size=batch_size,
                         epochs=1, seed=0, dataloader_kwargs={"shuffle": False}, temperature=1.0)
    metrics = tu.get(worker.update_actor(data), "metrics")
    return {key: float(values[0]) for key, values in metrics.items()}


def reference(model_path: str, loss_mode: str, hyper: dict, agg_mode: str) -> dict:
    """The same update outside verl: plain HF forward, drpo.losses, aggregate(), autograd grad norm."""
    import torch
    from transformers import Qwen2ForCausalLM

    from drpo.losses import aggregate, get_loss

    model = Qwen2ForCausalLM.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32)
    data = rollout_batch()
    prompt_width = data["prompts"].shape[1]
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                   position_ids=data["position_ids"]).logits  # [B, P + R, V]
    log_prob = torch.log_softmax(logits[:, prompt_width - 1:-1], -1).gather(
        -1, data["responses"][..., None])[..., 0]  # [B, R]
    loss_fn = get_loss(loss_mode, **hyper)
    mask = data["response_mask"].bool()

    def run(rows):
        return loss_fn(log_prob=log_prob[rows], rollout_log_prob=data["old_log_probs"][rows],
                       advantages=data["advantages"][rows], response_mask=mask[rows])

    out = run(slice(None))
    loss = aggregate(out.per_token, mask, agg_mode, horizon=HORIZON)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
    micro = [run(slice(i, i + MICRO_BATCH)).metrics for i in range(0, mask.shape[0], MICRO_BATCH)]
    return {"pg_loss": loss.item(), "grad_norm": grad_norm.item(), "metrics": out.metrics,
            "micro_batch_metrics": micro}


def main() -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()), VERL_ENGINE_DEVICE="cuda")
    sys.modules["trl"] = None  # an environment without TRL: find_spec("trl") is None for verl and for us
    import torch
    from verl.plugin.platform import set_platform

    set_platform(cpu_platform())
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    import verl
    from tiny_letters import save_letter_model

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    results = {}
    with tempfile.TemporaryDirectory() as model_path:
        save_letter_model(model_path)
        for loss_mode, (overrides, hyper, agg_mode) in CASES.items():
            results[loss_mode] = {"verl": verl_update(config_dir, model_path, loss_mode, overrides, agg_mode),
                                  "reference": reference(model_path, loss_mode, hyper, agg_mode)}
    torch.distributed.destroy_process_group()
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
