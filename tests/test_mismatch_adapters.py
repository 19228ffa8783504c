"""The log-prob writers of the verl and TRL adapters, through the engines' own call paths, then `drpo mismatch`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from drpo.cli import main
from drpo.mismatch import dump as dump_module
from drpo.mismatch import read_log_probs


@pytest.fixture
def env_dump_file(tmp_path, monkeypatch):
    path = tmp_path / "verl_log_probs.jsonl"
    monkeypatch.setenv(dump_module.DUMP_ENV, str(path))
    monkeypatch.setattr(dump_module, "_ENV_DUMPS", {})  # a fresh writer per test
    return path


@pytest.mark.slow
def test_verl_writer_through_verls_ppo_loss(env_dump_file, tmp_path):
    """verl.workers.utils.losses.ppo_loss calls our registered loss; with $DRPO_DUMP_LOG_PROBS the call is written."""
    pytest.importorskip("verl", reason="verl is not installed (pip install -e '.[verl]' -c constraints.txt)")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import no_padding_2_padding

    import drpo.integrations.verl  # noqa: F401  (registers loss_mode=drpo)

    config_dir = os.path.join(os.path.dirname(__import__("verl").__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"])
    config = omega_conf_to_dataclass(OmegaConf.merge(cfg.actor_rollout_ref.actor,
                                                     {"clip_ratio": 0.15, "policy_loss": {"loss_mode": "drpo"}}))
    g = torch.Generator().manual_seed(0)
    batch, prompt_len, length = 4, 3, 6
    old_log_prob = (torch.rand(batch, length, generator=g, dtype=torch.float64) * 0.9 + 0.05).log()  # [B, T] mu
    advantages = torch.randn(batch, 1, generator=g, dtype=torch.float64).expand(batch, length).contiguous()
    mask = torch.arange(length)[None, :] < torch.tensor([6, 2, 4, 1])[:, None]  # [B, T]
    attention_mask = torch.cat([torch.ones(batch, prompt_len, dtype=torch.long), mask.long()], dim=1)
    flat_log_prob = (-torch.rand(int(attention_mask.sum()), generator=g, dtype=torch.float64)).requires_grad_()
    data = TensorDict({"prompts": torch.zeros(batch, prompt_len, dtype=torch.long),
                       "responses": torch.zeros(batch, length, dtype=torch.long), "attention_mask": attention_mask,
                       "response_mask": mask.long(), "old_log_probs": old_log_prob, "advantages": advantages},
                      batch_size=[batch])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=batch)
    for _ in range(2):  # two loss calls: steps 0 and 1 of the file
        ppo_loss(config, {"log_probs": flat_log_prob}, data)

    written = read_log_probs(env_dump_file)
    log_prob = no_padding_2_padding(flat_log_prob, data).detach()  # [B, T], as verl hands it to the loss
    assert written.num_sequences == 2 * batch and sorted(set(written.step.tolist())) == [0, 1]
    first = written.step == 0
    assert np.allclose(written.rollout_log_prob[first], old_log_prob[mask].numpy())
    assert np.allclose(written.log_prob[first], log_prob[mask].numpy())
    assert np.allclose(written.advantage[first], advantages[mask].numpy())
    assert written.fields() == ["rollout_log_prob", "log_prob", "advantage"]
    # without IS weights the loss cannot tell bypass mode (mu) from decoupled mode (pi_old): the file says so
    assert written.engines == ["verl: rollout_log_prob column = verl's old_log_prob = mu in bypass mode, else pi_old"]
    assert main(["mismatch", str(env_dump_file), "--out", str(tmp_path / "report")]) == 0
    assert "total: pi vs mu" in (tmp_path / "report" / "mismatch.md").read_text()


@pytest.mark.slow
def test_trl_writer_through_a_training_run(tmp_path):
    """Two real DRPOTrainer steps with drpo_dump_log_probs: every loss call's mu, pi_old and pi, by global step."""
    pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[trl]' -c constraints.txt)")
    from datasets import Dataset
    from tiny_letters import letter_model, letter_tokenizer

    from drpo.integrations.trl import DRPOConfig, DRPOTrainer

    path = tmp_path / "trl_log_probs.jsonl"
    args = DRPOConfig(output_dir=str(tmp_path / "out"), drpo_loss="drpo", drpo_loss_kwargs={"delta": 0.15},
                      drpo_dump_log_probs=str(path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, steps_per_generation=2, max_steps=2, learning_rate=1e-2, use_cpu=True,
                      report_to="none", logging_steps=1, save_strategy="no", seed=0)
    trainer = DRPOTrainer(model=letter_model(), args=args, processing_class=letter_tokenizer(),
                          reward_funcs=lambda completions, **kw: [c.count("a") / 8 for c in completions],
                          train_dataset=Dataset.from_dict({"prompt": ["a b c", "d e f", "g h", "i j a"] * 2}))
    trainer.train()

    written = read_log_probs(path)
    assert sorted(set(written.step.tolist())) == [0, 1] and written.num_sequences == 8
    assert written.engines == ["trl: mu = old_per_token_logps"]
    first, second = written.step == 0, written.step == 1
    # one generation feeds two steps: the first is on-policy, the second sees pi moved away from pi_old
    assert np.abs(written.log_prob[first] - written.old_log_prob[first]).max() < 1e-5
    assert np.abs(written.log_prob[second] - written.old_log_prob[second]).max() > 1e-4
    assert main(["mismatch", str(path), "--out", str(tmp_path / "report")]) == 0
    assert "Policy drift: pi vs pi_old" in (tmp_path / "report" / "mismatch.md").read_text()
