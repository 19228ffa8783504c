"""The experimental adaptive boundary (drpo/adaptive.py): its arithmetic by hand, its config, its log."""

from __future__ import annotations

import math

import pytest
import torch

from drpo.adaptive import DeltaTracker
from drpo.config import ConfigError, load_config
from drpo.losses import get_loss


def tokens(gaps: list[float], mu: float = 0.5):
    """log pi_old, log mu, mask of one sequence whose |pi_old - mu| are ``gaps``, plus a padded token."""
    old = torch.tensor([[mu + g for g in gaps] + [0.99]]).log()
    rollout = torch.full_like(old, math.log(mu))
    mask = torch.tensor([[1.0] * len(gaps) + [0.0]])
    return old, rollout, mask


def test_tracker_arithmetic_by_hand():
    tracker = DeltaTracker(quantile=0.5, multiple=2.0, ema=0.75, min_delta=0.05, max_delta=1.0)
    loss = get_loss("drpo", delta=0.5)
    assert tracker.delta is None and tracker.apply(loss) is loss  # nothing measured: the loss keeps its delta
    # median of |pi_old - mu| = 0.1 (the padded token's 0.49 is not counted); m_1 = 0.1, delta = 0.2
    assert tracker.observe(*tokens([0.0, 0.1, 0.2])) == pytest.approx(0.1)
    assert tracker.delta == pytest.approx(0.2)
    # median 0.3: m_2 = 0.75 * 0.1 + 0.25 * 0.3 = 0.15, delta = 0.3
    tracker.observe(*tokens([0.2, 0.3, 0.4]))
    assert tracker.average == pytest.approx(0.15) and tracker.delta == pytest.approx(0.3)
    assert tracker.apply(loss).hyper.delta == pytest.approx(0.3) and loss.hyper.delta == 0.5
    tv = tracker.apply(get_loss("dppo_binary_tv"))
    assert tv.hyper.delta_low == tv.hyper.delta_high == pytest.approx(0.3)
    # clamped at both ends
    tracker.observe(*tokens([0.45, 0.45, 0.45]))  # m_3 = 0.75 * 0.15 + 0.25 * 0.45 = 0.225, 2 m = 0.45
    assert tracker.delta == pytest.approx(0.45)
    tiny = DeltaTracker(0.5, 2.0, 0.0, 0.05, 1.0)
    tiny.observe(*tokens([0.001, 0.001]))
    assert tiny.delta == 0.05
    big = DeltaTracker(0.5, 10.0, 0.0, 0.05, 1.0)
    big.observe(*tokens([0.3]))
    assert big.delta == 1.0
    restored = DeltaTracker(0.5, 2.0, 0.75, 0.05, 1.0)
    restored.load_state_dict(tracker.state_dict())
    assert restored.delta == tracker.delta


def test_config_is_off_by_default_and_refuses_what_it_cannot_set():
    assert not load_config(None, []).adaptive_delta.enabled
    with pytest.raises(ConfigError, match="loss=ppo_clip has none"):
        load_config(None, ["adaptive_delta.enabled=true", "loss=ppo_clip"])
    with pytest.raises(ConfigError, match="max_delta must be <= 1 for dppo_binary_tv"):
        load_config(None, ["adaptive_delta.enabled=true", "loss=dppo_binary_tv", "adaptive_delta.max_delta=2"])
    with pytest.raises(ConfigError, match="recompute_old_log_prob=true"):
        load_config(None, ["adaptive_delta.enabled=true", "recompute_old_log_prob=false"])
    with pytest.raises(ConfigError, match="above max_delta"):
        load_config(None, ["adaptive_delta.min_delta=0.5", "adaptive_delta.max_delta=0.1"])


def test_switched_off_its_constants_change_nothing_a_run_does():
    """A run made with adaptive_delta off is the same experiment whatever its constants (so a finished run is
    reused across a change of their defaults); switched on, they are part of the run."""
    from drpo.config import config_changes

    off = load_config(None, ["adaptive_delta.quantile=0.5", "adaptive_delta.multiple=7"]).recorded()
    assert config_changes(off, load_config(None, [])) == {}
    on = load_config(None, ["adaptive_delta.enabled=true", "adaptive_delta.multiple=7"]).recorded()
    assert set(config_changes(on, load_config(None, ["adaptive_delta.enabled=true"]))) == {"adaptive_delta.multiple"}
    assert set(config_changes(on, load_config(None, []))) == {"adaptive_delta.enabled", "adaptive_delta.multiple"}


def test_trainer_logs_the_delta_it_sets(tmp_path, monkeypatch):
    """loss/delta every step: the loss's own at step 1, then 3 x the moving p99 of the steps before, which the
    trainer also logs (mismatch/abs_p_p99, the same linear-interpolation quantile)."""
    from drpo.metrics import read_metrics
    from drpo.trainer import Trainer

    monkeypatch.setenv("DRPO_CACHE", str(tmp_path / "cache"))
    config = load_config(None, ["model=tiny", "warmup.steps=2", "warmup.target_accuracy=null", "eval.prompts=8",
                                "eval.samples=0", "rollout.prompts=4", "rollout.group_size=4", "tensorboard=false",
                                "rollout.precision=bf16", "steps=3", "adaptive_delta.enabled=true",
                                "adaptive_delta.quantile=0.99", "adaptive_delta.multiple=3",
                                "adaptive_delta.min_delta=1e-6", f"out={tmp_path / 'run'}"])
    Trainer(config).train()
    steps = [r for r in read_metrics(tmp_path / "run") if "loss/delta" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    p99 = [r["mismatch/abs_p_p99"] for r in steps]
    assert steps[0]["loss/delta"] == get_loss("drpo").hyper.delta
    assert steps[1]["loss/delta"] == pytest.approx(3 * p99[0], rel=1e-6)
    assert steps[2]["loss/delta"] == pytest.approx(3 * (0.9 * p99[0] + 0.1 * p99[1]), rel=1e-6)
