"""drpo mismatch on what our own runs produce: the trainer's dump, its per-step metrics, the model mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drpo.cli import main
from drpo.config import load_config
from drpo.metrics import read_metrics
from drpo.mismatch import pair_stats, read_log_probs
from drpo.trainer import Trainer

TINY = ["model=tiny", "warmup.steps=5", "rollout.prompts=2", "rollout.group_size=2", "eval.prompts=4",
        "eval.samples=1", "tensorboard=false"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DRPO_CACHE", str(tmp_path_factory.getbasetemp() / "drpo-cache"))


def test_trainer_dump_then_drpo_mismatch(tmp_path):
    run = tmp_path / "bf16"
    config = load_config(None, [*TINY, "steps=3", "updates_per_batch=2", "rollout.precision=bf16", "rollout.lag=1",
                                "dump_log_probs=true", f"out={run}"])
    Trainer(config).train()
    data = read_log_probs(run)
    assert data.fields() == ["rollout_log_prob", "old_log_prob", "log_prob", "advantage", "policy_version"]
    assert sorted(set(data.step.tolist())) == [1, 2, 3] and data.num_sequences == 3 * 4
    assert sorted(set(data.policy_version.tolist())) == [0, 1]  # lag 1: step 3 samples with the weights of sync 1
    assert data.engines == ["drpo bf16 rollout, lag 1"]
    # the per-step tail metrics are the file's statistics of that step
    metrics = {r["step"]: r for r in read_metrics(run)}
    step = data.step == 2
    expected = pair_stats(data.old_log_prob[step], data.rollout_log_prob[step])
    assert metrics[2]["mismatch/abs_p_p99"] == pytest.approx(expected["abs_p_p99"], rel=1e-4, abs=1e-9)
    assert metrics[2]["mismatch/ratio_outside_0.9_1.1"] == pytest.approx(expected["ratio_outside_0.9_1.1"])

    out = tmp_path / "report"
    assert main(["mismatch", str(run), "--out", str(out)]) == 0
    saved = json.loads((out / "mismatch.json").read_text())["sources"][0]
    assert saved["label"] == "bf16" and set(saved["pairs"]) == {"engine", "drift", "total"}
    assert saved["tokens"] == data.num_tokens and [row["step"] for row in saved["trend"]] == [1, 2, 3]
    assert "## Policy drift: pi vs pi_old" in (out / "mismatch.md").read_text()


def test_first_mini_batch_pi_is_pi_old_and_resume_keeps_the_dump(tmp_path):
    run = tmp_path / "fp32"
    args = [*TINY, "steps=2", "rollout.precision=fp32", "updates_per_batch=1", "dump_log_probs=true",
            "checkpoint_every=1", f"out={run}"]
    Trainer(load_config(None, args)).train()
    data = read_log_probs(run)
    # one update per batch: pi at the update is pi_old (same weights, same numerics); fp32 rollouts: mu too
    assert np.abs(data.log_prob - data.old_log_prob).max() < 1e-5
    assert np.abs(data.old_log_prob - data.rollout_log_prob).max() < 1e-4
    Trainer(load_config(None, [*args, "steps=3", f"resume={run}"])).train()
    resumed = read_log_probs(run)
    assert sorted(set(resumed.step.tolist())) == [1, 2, 3]
    assert np.array_equal(resumed.rollout_log_prob[resumed.step <= 2], data.rollout_log_prob)


def test_model_mode_per_precision(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["mismatch", "model=tiny", "warmup.steps=5", "--precisions", "fp32", "bf16", "fp8",
                 "--prompts", "4", "--samples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fp8 rounds bf16 model; Linear weights" in printed
    sources = {s["label"]: s for s in json.loads((out / "mismatch.json").read_text())["sources"]}
    assert list(sources) == ["fp32", "bf16", "fp8"]
    fp32, bf16, fp8 = (sources[p]["pairs"]["engine"] for p in ("fp32", "bf16", "fp8"))
    assert fp32["abs_p_max"] < 1e-5  # the fp32 copy is the trainer itself (KV cache vs full forward aside)
    assert bf16["abs_p_mean"] > 10 * fp32["abs_p_mean"] and fp8["abs_p_mean"] > 0
    assert "| fp8 | pi_old vs mu |" in (out / "mismatch.md").read_text()
    assert main(["mismatch", "model=tiny", "--precisions", "fp4"]) == 2
