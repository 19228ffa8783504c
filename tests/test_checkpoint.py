"""Checkpoints: atomic and durable writes, and loading that never runs code."""

from __future__ import annotations

import os
import random
import stat

import numpy as np
import pytest
import torch
from payloads import Payload

from drpo import checkpoint as checkpoint_module
from drpo.checkpoint import (
    global_rng_state,
    load_checkpoint,
    load_state_file,
    save_checkpoint,
    set_global_rng_state,
    upgrade_checkpoint,
)


def test_the_directory_is_flushed_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        calls.append(f"rename -> {os.path.basename(dst)}")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    save_checkpoint(tmp_path, {"step": 1})
    save_checkpoint(tmp_path, {"step": 2})
    assert calls == ["fsync file", "rename -> latest.pt", "fsync dir",
                     "fsync file", "rename -> previous.pt", "rename -> latest.pt", "fsync dir"]
    assert load_checkpoint(tmp_path)["step"] == 2 and load_state_file(tmp_path / "previous.pt")["step"] == 1


def test_rng_states_round_trip_through_weights_only(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path, global_rng_state())
    expected = (torch.rand(3), random.random(), np.random.standard_normal(2))
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    set_global_rng_state(load_checkpoint(tmp_path))  # weights_only=True inside
    got = (torch.rand(3), random.random(), np.random.standard_normal(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def test_a_file_that_needs_unpickling_is_refused_without_running_it(tmp_path):
    path = tmp_path / "latest.pt"
    torch.save({"step": 3, "evil": Payload()}, path)
    with pytest.raises(ValueError, match=r"not loaded .* python -m drpo.checkpoint"):
        load_checkpoint(tmp_path)
    assert not Payload.ran


def test_an_old_checkpoint_converts_once(tmp_path):
    np.random.seed(5)
    old = {"step": 7, "numpy_rng": np.random.get_state(), "model": {"w": torch.ones(2)}}  # the old format
    expected = np.random.standard_normal(3)
    torch.save(old, tmp_path / "latest.pt")
    with pytest.raises(ValueError, match="older drpo"):
        load_checkpoint(tmp_path)
    upgrade_checkpoint(tmp_path / "latest.pt")
    state = load_checkpoint(tmp_path)  # weights_only=True
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.ones(2))
    np.random.seed(0)
    np.random.set_state({**state["numpy_rng"], "state": {**state["numpy_rng"]["state"],
                                                         "key": np.asarray(state["numpy_rng"]["state"]["key"], np.uint32)}})
    assert np.array_equal(np.random.standard_normal(3), expected)


@pytest.mark.parametrize("name", ["metrics.jsonl", "log_probs.jsonl"])
def test_resume_drops_a_partial_last_line_and_only_that(tmp_path, name):
    """A run killed while writing its log leaves the last line cut off: resuming drops it, says so, and goes on."""
    import json

    from drpo.metrics import MetricsLogger
    from drpo.mismatch.format import LogProbWriter

    records = [{"step": step, "rollout_log_prob": [-0.5], "reward/mean": 0.25 * step} for step in range(4)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / name
    path.write_text(text[:-40])  # killed mid-line: step 3's record is cut
    with pytest.warns(UserWarning, match="dropped its last line"):
        if name == "metrics.jsonl":
            MetricsLogger(tmp_path, report_to=(), resume_step=5)
        else:
            LogProbWriter(path, resume_step=5)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]

    path.write_text(text.replace('"step": 1,', '"step": 1', 1))  # a damaged line that is not the last: an error
    with pytest.raises(json.JSONDecodeError):
        MetricsLogger(tmp_path, report_to=(), resume_step=5) if name == "metrics.jsonl" else \
            LogProbWriter(path, resume_step=5)


def test_a_resumed_run_hides_the_tensorboard_events_it_logs_again(tmp_path):
    """Steps logged after the checkpoint and run again on resume appear once in TensorBoard, with their new values."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from drpo.metrics import MetricsLogger

    first = MetricsLogger(tmp_path)
    for step in range(4):
        first.log({"step": step, "reward/mean": float(step)})
    first.close()
    resumed = MetricsLogger(tmp_path, resume_step=1)  # checkpoint at step 1, killed at step 3
    for step in (2, 3):
        resumed.log({"step": step, "reward/mean": 10.0 * step})
    resumed.close()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(0, 0.0), (1, 1.0), (2, 20.0), (3, 30.0)]
