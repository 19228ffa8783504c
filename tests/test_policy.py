"""The base model: its cache loads without running code; a warm-up that misses its target says so."""

from __future__ import annotations

import pytest
import torch
from payloads import Payload

from drpo.backends import build_policy
from drpo.config import load_config
from drpo.paths import cache_dir
from drpo.warmup import base_model_key

# not configs.CHEAP: two steps of warm-up, so the cached weights differ from a freshly built model's and a round
# trip that rebuilt the model instead of loading it would fail
WARMED = ["model=tiny", "warmup.steps=2", "warmup.target_accuracy=null"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # overrides conftest.py's session-wide cache: these tests need an empty one each (a first build that warms up,
    # a cache file planted by hand)
    monkeypatch.setenv("DRPO_CACHE", str(tmp_path / "cache"))


def test_a_cached_base_model_that_needs_unpickling_is_refused():
    config = load_config(None, WARMED)
    path = cache_dir() / "base" / f"{base_model_key(config)}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "info": {}, "evil": Payload()}, path)
    with pytest.raises(ValueError, match="not loaded"):
        build_policy(config)
    assert not Payload.ran


def test_the_cache_round_trips_through_weights_only():
    first = build_policy(load_config(None, WARMED))
    again = build_policy(load_config(None, WARMED))
    assert again.base_info["cached"] and not first.base_info["cached"]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_a_warm_up_that_misses_its_target_warns_and_summary_json_records_it(tmp_path):
    """Two steps of warm-up cannot reach 0.9; the cached model warns again on the next run."""
    import json

    from drpo.trainer import Trainer

    overrides = ["model=tiny", "warmup.steps=2", "warmup.check_every=1", "warmup.target_accuracy=0.9"]
    with pytest.warns(UserWarning, match=r"missed its warm-up target: .* after 2 steps .*warmup.target_accuracy=0.9"):
        info = build_policy(load_config(None, overrides)).base_info
    assert info["missed_target"] and info["warmup_probe_accuracy"] < 0.9 and info["warmup_target_accuracy"] == 0.9
    config = load_config(None, [*overrides, "steps=0", "eval.prompts=4", "eval.samples=1", "tensorboard=false",
                                f"out={tmp_path / 'run'}"])
    with pytest.warns(UserWarning, match="missed its warm-up target"):
        trainer = Trainer(config)
    assert trainer.policy.base_info["cached"]
    trainer.train()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["base_model"]["missed_target"] is True
    reached = build_policy(load_config(None, [*overrides, "warmup.target_accuracy=null"])).base_info
    assert reached["missed_target"] is False  # no target, nothing to miss
