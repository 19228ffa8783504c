"""The verl adapter against real verl: registry via the entry point, verl's actor config, its aggregation.

Parity: for every registered name and every verl aggregation mode, the loss value and the gradient
w.r.t. log_prob equal drpo.losses + drpo.losses.aggregate on the same float64 inputs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is not installed (pip install -e '.[verl]' -c constraints.txt)")

from hydra import compose, initialize_config_dir  # noqa: E402  (hydra comes with verl)
from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

from drpo.integrations import verl as adapter  # noqa: E402
from drpo.losses import aggregate, get_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")

# name -> (verl actor-config overrides, the same hyper-parameters written in our names)
CASES = {
    "drpo": ({"clip_ratio": 0.1}, {"delta": 0.1}),
    "spo": ({"clip_ratio": 0.3}, {"eps": 0.3}),
    "dppo_binary_tv": ({"clip_ratio_low": 0.1, "clip_ratio_high": 0.2, "clip_ratio_c": 10.0},
                       {"delta_low": 0.1, "delta_high": 0.2, "trunc": 10.0}),
    "dppo_binary_kl": ({"clip_ratio": 0.05, "clip_ratio_c": 10.0}, {"delta": 0.05, "trunc": 10.0}),
}
VERL_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@pytest.fixture(scope="module")
def actor_dictconfig():
    """verl's own ppo_trainer.yaml, composed by hydra as `python -m verl.trainer.main_ppo` does."""
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"])
    return cfg.actor_rollout_ref.actor


def actor_config(actor_dictconfig, name: str, loss_scale_factor: int | None = None):
    """The real dataclass verl's workers build (FSDPActorConfig), with loss_mode=name and its fields."""
    overrides = {**CASES[name][0], "loss_scale_factor": loss_scale_factor, "policy_loss": {"loss_mode": name}}
    return omega_conf_to_dataclass(OmegaConf.merge(actor_dictconfig, overrides))


def random_batch(batch: int = 6, length: int = 7, seed: int = 0):
    """float64 [B, T] tensors with large shifts, rare tokens, mixed-sign advantages and ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(batch, length, generator=g, dtype=torch.float64) * 0.96 + 0.02  # [B, T]
    mu[:, ::3] = 0.01  # rare tokens: ratios past any truncation once pi moves
    pi = (mu + 0.5 * (torch.rand(batch, length, generator=g, dtype=torch.float64) - 0.5)).clamp(1e-3, 0.999)
    log_prob = pi.log().requires_grad_()  # [B, T]
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[-1] = 0  # one fully masked sequence: left out of the sequence means
    mask = torch.arange(length)[None, :] < lengths[:, None]  # [B, T] bool, as verl passes it
    advantages = torch.randn(batch, generator=g, dtype=torch.float64)[:, None].expand(batch, length).clone()
    return log_prob, mu.log(), advantages, mask


def reference(name, mode, log_prob, old_log_prob, advantages, mask, horizon):
    out = get_loss(name, **CASES[name][1])(log_prob=log_prob, rollout_log_prob=old_log_prob,
                                          advantages=advantages, response_mask=mask)
    if mode == "token-sum":  # verl-only mode: the plain masked sum
        return (out.per_token * mask).sum(), out
    return aggregate(out.per_token, mask, mode, horizon=horizon), out


@pytest.mark.slow
def test_import_verl_alone_registers_our_losses():
    """A fresh interpreter: nothing but `import verl` (the verl.plugins entry point does the rest)."""
    code = ("import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
            f"print([get_policy_loss_fn(n).__name__ for n in {list(CASES)!r}])")
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_PLUGINS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(f"drpo_{name}_policy_loss" in result.stdout for name in CASES), result.stdout
    # the plugin says, on every `import verl`, when TRL in this environment would break verl's engine
    assert ("pip uninstall trl" in result.stderr) == (adapter.trl_conflict() is not None), result.stderr


# What `python -m verl.trainer.main_ppo` imports on its way to training (v1 trainer, its workers, the
# legacy trainer); verl declares their dependencies in its verl-core extra, which our [verl] brings.
TRAINER_MODULES = ["verl.trainer.main_ppo", "verl.trainer.ppo.v1", "transfer_queue", "verl.workers.engine_workers",
                   "verl.trainer.main_ppo_v0", "verl.experimental.agent_loop"]


@pytest.mark.parametrize("module", TRAINER_MODULES)
def test_verl_trainer_imports(module):
    try:
        importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{module}: {error!r}; pip install -e '.[verl]' brings it (through verl[verl-core])")


def test_trl_conflict_is_reported_exactly_when_verl_meets_it():
    """trl_conflict() speaks when verl's engine would fail on TRL, and the failure is real."""
    message = adapter.trl_conflict()
    if importlib.util.find_spec("trl") is None:
        assert message is None
        return
    import trl

    if message is None:  # a TRL that verl can use (it has the class verl imports)
        return
    assert trl.__version__ in message and "pip uninstall trl" in message
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from verl.models.transformers.monkey_patch import apply_monkey_patch

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ImportError, match="AutoModelForCausalLMWithValueHead"):
        apply_monkey_patch(model=model)  # what verl's FSDP engine runs on every model it builds


def test_registered_names_do_not_clash():
    assert adapter.REGISTERED == list(CASES)
    for name in CASES:
        assert get_policy_loss_fn(name)._drpo_loss_name == name
    # verl's own losses stay verl's; the Top-K variants are not offered (no top-k data in verl's loss call)
    for theirs in ("vanilla", "dppo_tv", "dppo_kl", "cispo", "bypass_mode"):
        assert not hasattr(POLICY_LOSS_REGISTRY[theirs], "_drpo_loss_name")
    for name in ("dppo_topk_tv", "dppo_topk_kl", "decoupled_ppo"):
        assert name not in POLICY_LOSS_REGISTRY and name in adapter.NOT_REGISTERED
    assert not hasattr(POLICY_LOSS_REGISTRY["gspo"], "_drpo_loss_name") and "gspo" in adapter.NOT_REGISTERED
    assert adapter.register() == list(CASES)  # idempotent


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", VERL_MODES)
def test_parity_with_drpo_losses(actor_dictconfig, name, mode):
    horizon = 16  # a fixed seq-mean-token-sum-norm horizon (loss_scale_factor)
    config = actor_config(actor_dictconfig, name, loss_scale_factor=horizon)
    log_prob, old_log_prob, advantages, mask = random_batch(seed=10 * VERL_MODES.index(mode) + list(CASES).index(name))

    loss, metrics = get_policy_loss_fn(name)(old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                                             response_mask=mask, loss_agg_mode=mode, config=config)
    (grad,) = torch.autograd.grad(loss, log_prob)
    expected, out = reference(name, mode, log_prob, old_log_prob, advantages, mask, horizon)
    (expected_grad,) = torch.autograd.grad(expected, log_prob)

    assert abs(loss.item() - expected.item()) <= 1e-6
    assert (grad - expected_grad).abs().max().item() <= 1e-6
    assert {f"actor/{k}" for k in out.metrics} <= set(metrics) and "actor/ppo_kl" in metrics
    assert metrics["actor/loss/weight_mean"] == pytest.approx(out.metrics["loss/weight_mean"])


@pytest.mark.parametrize("name", list(CASES))
def test_norm_horizon_defaults_to_response_length(actor_dictconfig, name):
    """loss_scale_factor=None: verl divides by the padded response length T, and so must we."""
    config = actor_config(actor_dictconfig, name, loss_scale_factor=None)
    log_prob, old_log_prob, advantages, mask = random_batch()
    loss, _ = get_policy_loss_fn(name)(old_log_prob, log_prob, advantages, mask, "seq-mean-token-sum-norm", config)
    expected, _ = reference(name, "seq-mean-token-sum-norm", log_prob, old_log_prob, advantages, mask,
                            horizon=mask.shape[-1])
    assert abs(loss.item() - expected.item()) <= 1e-6


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_loss_does_not_change_with_data_parallel_size(actor_dictconfig, name, mode):
    """One rank with the whole batch == two ranks with half each and verl's global batch info.

    DDP averages gradients over ranks, so each rank's gradient / dp_size must equal the full-batch one.
    """
    log_prob, old_log_prob, advantages, mask = random_batch(batch=8, seed=3)
    single = actor_config(actor_dictconfig, name, loss_scale_factor=16)
    full_loss, _ = get_policy_loss_fn(name)(old_log_prob, log_prob, advantages, mask, mode, single)
    (full_grad,) = torch.autograd.grad(full_loss, log_prob)

    dp_size, rank_losses = 2, []
    for rows in (slice(0, 4), slice(4, 8)):
        config = actor_config(actor_dictconfig, name, loss_scale_factor=16)
        config.global_batch_info.update(dp_size=dp_size, batch_num_tokens=int(mask.sum()),
                                        global_batch_size=int((mask.sum(-1) > 0).sum()))
        shard = log_prob.detach()[rows].clone().requires_grad_()
        loss, _ = get_policy_loss_fn(name)(old_log_prob[rows], shard, advantages[rows], mask[rows], mode, config)
        (grad,) = torch.autograd.grad(loss, shard)
        assert (grad / dp_size - full_grad[rows]).abs().max().item() <= 1e-6
        rank_losses.append(loss.item())
    assert abs(sum(rank_losses) / dp_size - full_loss.item()) <= 1e-6


def test_rollout_is_weights_scale_the_per_token_loss(actor_dictconfig):
    """Decoupled mode: verl's IS weights multiply the per-token loss, as in verl's own losses."""
    config = actor_config(actor_dictconfig, "drpo")
    log_prob, old_log_prob, advantages, mask = random_batch()
    weights = torch.rand(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, _ = get_policy_loss_fn("drpo")(old_log_prob, log_prob, advantages, mask, "token-mean", config, weights)
    out = get_loss("drpo", delta=0.1)(log_prob=log_prob, rollout_log_prob=old_log_prob, advantages=advantages,
                                      response_mask=mask)
    assert abs(loss.item() - aggregate(out.per_token * weights, mask, "token-mean").item()) <= 1e-6


def test_dppo_binary_tv_agrees_with_verls_own_dppo_tv(actor_dictconfig):
    """Same mask rule and truncated-IS gradient as verl's dppo_tv, read from the same config fields. The values
    differ by design: drpo reports minus DPPO's objective, -m min(r, C) A per token, verl its log-pi surrogate
    -m sg(min(r, C)) A log pi, which has the same gradient; so verl's value is drpo's per-token value times
    log pi, aggregated alike."""
    config = actor_config(actor_dictconfig, "dppo_binary_tv")
    log_prob, old_log_prob, advantages, mask = random_batch(seed=5)
    ours, _ = get_policy_loss_fn("dppo_binary_tv")(old_log_prob, log_prob, advantages, mask, "token-mean", config)
    theirs, _ = get_policy_loss_fn("dppo_tv")(old_log_prob, log_prob, advantages, mask, "token-mean", config)
    grads = [torch.autograd.grad(loss, log_prob)[0] for loss in (ours, theirs)]
    assert (grads[0] - grads[1]).abs().max().item() <= 1e-6
    expected, out = reference("dppo_binary_tv", "token-mean", log_prob, old_log_prob, advantages, mask, None)
    assert abs(ours.item() - expected.item()) <= 1e-6
    surrogate = aggregate(out.per_token.detach() * log_prob.detach(), mask, "token-mean")
    assert abs(theirs.item() - surrogate.item()) <= 1e-6 and abs(theirs.item() - ours.item()) > 1e-3


def test_verls_real_call_site(actor_dictconfig):
    """verl.workers.utils.losses.ppo_loss: unpadded model output, TensorDict batch, global batch info."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import no_padding_2_padding

    config = actor_config(actor_dictconfig, "drpo")
    batch, prompt_len, length = 4, 3, 6
    _, old_log_prob, advantages, _ = random_batch(batch, length, seed=7)
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(length)[None, :] < lengths[:, None]  # [B, T]
    attention_mask = torch.cat([torch.ones(batch, prompt_len, dtype=torch.long), mask.long()], dim=1)
    flat_log_prob = (-torch.rand(int(attention_mask.sum()), dtype=torch.float64)).requires_grad_()  # (total_nnz,)
    data = TensorDict({"prompts": torch.zeros(batch, prompt_len, dtype=torch.long),
                       "responses": torch.zeros(batch, length, dtype=torch.long), "attention_mask": attention_mask,
                       "response_mask": mask.long(), "old_log_probs": old_log_prob, "advantages": advantages},
                      batch_size=[batch])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=batch)

    loss, metrics = ppo_loss(config, {"log_probs": flat_log_prob}, data)
    (grad,) = torch.autograd.grad(loss, flat_log_prob)
    log_prob = no_padding_2_padding(flat_log_prob, data)  # [B, T], the same slicing verl applies
    expected, _ = reference("drpo", "token-mean", log_prob, old_log_prob, advantages, mask, None)
    (expected_grad,) = torch.autograd.grad(expected, flat_log_prob)
    assert abs(loss.item() - expected.item()) <= 1e-6
    assert (grad - expected_grad).abs().max().item() <= 1e-6
    assert "actor/loss/corrective_frac" in metrics and "actor/pg_loss" in metrics


@pytest.fixture(scope="module")
def cpu_update():
    """tests/verl_cpu_update.py in a fresh interpreter: verl's real actor update for drpo and dppo_binary_tv."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_PLUGINS"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "verl_cpu_update.py")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["drpo", "dppo_binary_tv"])
def test_verls_real_update_path(cpu_update, name):
    """update_actor -> train_mini_batch -> FSDP2 engine -> ppo_loss -> our loss, on CPU (verl_cpu_update.py).

    verl's pg_loss (summed over two micro-batches) and grad norm equal one drpo.losses + aggregate()
    computation on the whole mini-batch outside verl, and our metrics reach verl's output.
    """
    theirs, ours = cpu_update[name]["verl"], cpu_update[name]["reference"]
    assert abs(theirs["actor/pg_loss"] - ours["pg_loss"]) <= 1e-6
    assert abs(theirs["grad_norm"] - ours["grad_norm"]) <= 1e-6  # the trainer logs it as actor/grad_norm
    assert {f"actor/{key}" for key in ours["metrics"]} <= set(theirs)
    # verl averages a loss's metrics over micro-batches, max and min included (README, "Scaling out")
    micro = ours["micro_batch_metrics"]
    for key in ("ratio/max", "shift/abs_max", "loss/masked_frac", "loss/corrective_frac"):
        assert theirs[f"actor/{key}"] == pytest.approx(sum(m[key] for m in micro) / len(micro), abs=1e-6)
    assert theirs["actor/ratio/max"] < ours["metrics"]["ratio/max"]  # so not the batch's maximum


def test_seq_mean_token_sum_norm_as_the_readme_says():
    """verl 0.9: per-sequence token sum / loss_scale_factor, mean over the global sequence count (empty
    sequences included, where aggregate() leaves them out); docs/integrations.md's verl section says so."""
    from verl.trainer.ppo.core_algos import agg_loss

    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last sequence has no valid token
    theirs = agg_loss(per_token, mask, "seq-mean-token-sum-norm", global_batch_size=3, loss_scale_factor=4)
    assert theirs.item() == pytest.approx((3.0 + 3.0) / 3 / 4)  # the empty sequence counts in the mean
    assert aggregate(per_token, mask, "seq-mean-token-sum-norm", horizon=4).item() == pytest.approx((3.0 + 3.0) / 2 / 4)
    guide = (REPO / "docs" / "integrations.md").read_text()
    section = guide[guide.index("## verl"):guide.index("## TRL")].lower()
    assert "seq-mean-token-sum-norm" in section and "mean over" in section and "older verl" in section


def test_missing_config_field_says_which():
    with pytest.raises(ValueError, match="clip_ratio"):
        adapter.hyper_from_config("drpo", {"clip_ratio": None})


def test_example_recipe_config_composes():
    """examples/verl: the Qwen3-4B-Base DRPO recipe resolves to our loss, mu-anchored, with the paper's numbers."""
    with initialize_config_dir(config_dir=str(REPO / "examples" / "verl"), version_base=None):
        cfg = compose(config_name="drpo_qwen3_4b_base", overrides=["data.train_files=x", "data.val_files=y"])
    actor = cfg.actor_rollout_ref.actor
    assert actor.policy_loss.loss_mode == "drpo" and get_policy_loss_fn(actor.policy_loss.loss_mode)
    assert cfg.algorithm.rollout_correction.bypass_mode is True and cfg.trainer.use_v1 is True
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True
    assert cfg.data.train_batch_size == 64 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.data.train_batch_size // actor.ppo_mini_batch_size * actor.ppo_epochs == 4  # updates per rollout
    assert actor.optim.lr == 1e-6 and actor.loss_agg_mode == "seq-mean-token-sum-norm"
    assert actor.loss_scale_factor == 8192 and cfg.data.max_response_length == 8192
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.norm_adv_by_std_in_grpo is False
    assert cfg.actor_rollout_ref.rollout.val_kwargs.n == 16 and cfg.actor_rollout_ref.rollout.val_kwargs.do_sample
    assert omega_conf_to_dataclass(actor).policy_loss.loss_mode == "drpo"  # verl accepts it as an ActorConfig


def test_verl_defaults_are_named_not_silently_used(actor_dictconfig, caplog):
    """loss_mode=drpo with no clip_ratio: verl's ActorConfig hands the PPO default 0.2 as delta; the adapter
    logs the loss it runs with the field each value came from, once, and warns with the recommended value."""
    from drpo.losses import DRPO_DELTA

    assert adapter.verl_defaults() == {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2,
                                       "clip_ratio_c": 3.0}
    adapter._ANNOUNCED.clear()
    config = omega_conf_to_dataclass(OmegaConf.merge(actor_dictconfig, {"policy_loss": {"loss_mode": "drpo"}}))
    log_prob, old_log_prob, advantages, mask = random_batch()
    with caplog.at_level("WARNING", logger="drpo.integrations.verl"):
        for _ in range(2):
            get_policy_loss_fn("drpo")(old_log_prob, log_prob, advantages, mask, config=config)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == ("drpo: verl loss_mode 'drpo' runs get_loss('drpo', anchor='rollout', delta=0.2): "
                           "anchor: drpo's default, delta from actor.clip_ratio")
    assert messages[1:] == [f"drpo: loss_mode 'drpo': delta=0.2 is verl's own default for actor.clip_ratio (PPO's "
                            f"setting), not drpo's: the recommended delta is {DRPO_DELTA}, set "
                            f"actor_rollout_ref.actor.clip_ratio={DRPO_DELTA}"]  # once, not per call

    caplog.clear()
    tv = omega_conf_to_dataclass(OmegaConf.merge(actor_dictconfig, {"policy_loss": {"loss_mode": "dppo_binary_tv"},
                                                                     "clip_ratio_low": 0.15, "clip_ratio_high": 0.15}))
    with caplog.at_level("WARNING", logger="drpo.integrations.verl"):
        adapter.hyper_from_config("dppo_binary_tv", tv)
    warned = [r.getMessage() for r in caplog.records][1:]
    assert len(warned) == 1 and "trunc=3.0 is verl's own default for actor.clip_ratio_c" in warned[0]
    assert warned[0].endswith("set actor_rollout_ref.actor.clip_ratio_c=20.0")

    caplog.clear()
    set_ = omega_conf_to_dataclass(OmegaConf.merge(actor_dictconfig, {"policy_loss": {"loss_mode": "drpo"},
                                                                       "clip_ratio": DRPO_DELTA}))
    wide = omega_conf_to_dataclass(OmegaConf.merge(actor_dictconfig, {"policy_loss": {"loss_mode": "drpo"},
                                                                      "clip_ratio": 12.5}))
    with caplog.at_level("WARNING", logger="drpo.integrations.verl"):
        adapter.hyper_from_config("drpo", set_)
        assert len(caplog.records) == 1  # the resolved line only
        adapter.hyper_from_config("drpo", wide)
    assert "delta=12.5 >= 1, so the trust region cannot bind" in caplog.records[-1].getMessage()
