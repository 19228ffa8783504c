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

# not configs.CHEAP: 2 prompts x 2 samples per step, the sizes the dump's row counts below are checked against
TINY = ["model=tiny", "warmup.steps=5", "rollout.prompts=2", "rollout.group_size=2", "eval.prompts=4",
        "eval.samples=1", "tensorboard=false"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_model_mode_per_precision(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["mismatch", "model=tiny", "warmup.steps=5", "--precisions", "fp32", "bf16", "native:fp8",
                 "--prompts", "4", "--samples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "native:fp8 rounds bf16 model; Linear weights" in printed
    saved = json.loads((out / "mismatch.json").read_text())
    sources = {s["label"]: s for s in saved["sources"]}
    assert list(sources) == ["native:fp32", "native:bf16", "native:fp8"]  # a bare mode is its first engine's
    assert "--rollouts native:fp32 native:bf16 native:fp8" in saved["command"]
    fp32, bf16, fp8 = (sources[f"native:{p}"]["pairs"]["engine"] for p in ("fp32", "bf16", "fp8"))
    assert fp32["abs_p_max"] < 1e-5  # the fp32 copy is the trainer itself (KV cache vs full forward aside)
    assert bf16["abs_p_mean"] > 10 * fp32["abs_p_mean"] and fp8["abs_p_mean"] > 0
    assert "| native:fp8 | pi_old vs mu |" in (out / "mismatch.md").read_text()
    assert sources["native:fp8"]["engines"] == ["drpo native fp8"]
    assert main(["mismatch", "model=tiny", "--precisions", "fp4"]) == 2


def test_rollouts_parse_engine_and_mode():
    from drpo.mismatch.model import DEFAULT_ROLLOUTS, Rollout, parse_rollout, parse_rollouts, rollout_config

    assert parse_rollout("q8_0") == Rollout("llamacpp", "q8_0") and parse_rollout("fp8") == Rollout("native", "fp8")
    assert [r.label for r in parse_rollouts(DEFAULT_ROLLOUTS)] == ["native:bf16", "native:fp16", "native:fp8",
                                                                   "native:int8"]
    assert parse_rollout("llamacpp:q4_0").rounds.startswith("llama.cpp with Q4_0 weights")
    for bad, message in (("fp4", "unknown rollout 'fp4'; valid: native:fp32, "), ("native:q8_0", "unknown rollout"),
                         ("llamacpp:bf16", "unknown rollout"), ("tpu:bf16", "unknown rollout"),
                         ("vllm:bf16", "does not run vLLM"), ("vllm:fp4", "does not run vLLM")):
        with pytest.raises(ValueError, match=message):
            parse_rollout(bad)
    with pytest.raises(ValueError, match="native:bf16 given twice"):
        parse_rollouts(["bf16", "native:bf16"])
    # one construction path: the run config with the rollout's engine and mode (an engine's own keys stay with it)
    config = load_config(None, ["model=tiny", "model.arch=llama", "rollout.engine=llamacpp",
                                "rollout.llamacpp_threads=1", "seed=3"])
    native, llama = (rollout_config(config, parse_rollout(r)) for r in ("bf16", "llamacpp:q4_0"))
    assert (native.rollout.engine, native.rollout.precision, native.rollout.llamacpp_threads) == ("native", "bf16", None)
    assert (llama.rollout.engine, llama.rollout.precision, llama.rollout.llamacpp_threads) == ("llamacpp", "q4_0", 1)
    assert native.seed == llama.seed == 3 and native.model == config.model


def test_model_mode_refuses_unknown_rollouts_and_vllm_in_one_line(capsys):
    for rollout, message in (("fp4", "unknown rollout 'fp4'"), ("vllm:bf16", "does not run vLLM")):
        assert main(["mismatch", "model=tiny", "--rollouts", "native:bf16", rollout]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"drpo mismatch: error: rollout '{rollout}'" if "vllm" in rollout
                              else f"drpo mismatch: error: {message}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_model_mode_native_and_llamacpp(tmp_path, capsys):
    """The tiny llama-architecture model's rollouts by the native bf16 copy and by llama.cpp in q8_0, one seed."""
    pytest.importorskip("llama_cpp")
    out = tmp_path / "engines"
    assert main(["mismatch", "model=tiny", "model.arch=llama", "warmup.steps=0", "warmup.target_accuracy=null",
                 "--rollouts", "native:bf16", "llamacpp:q8_0", "--prompts", "4", "--samples", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "llamacpp:q8_0 rounds llama.cpp with Q8_0 weights" in printed and "by response length" in printed
    sources = {s["label"]: s for s in json.loads((out / "mismatch.json").read_text())["sources"]}
    assert list(sources) == ["native:bf16", "llamacpp:q8_0"]
    for label, source in sources.items():
        assert source["profile_pair"] == "engine" and source["by_length"] and source["by_position"], label
        assert sum(row["sequences"] for row in source["by_length"]) == source["sequences"] == 4 * 2
        assert sum(row["tokens"] for row in source["by_length"]) == source["tokens"]
        assert source["sequence"]["seq_k3"] >= 0 and source["pairs"]["engine"]["abs_p_mean"] > 0
    assert sources["llamacpp:q8_0"]["engines"] == ["drpo llamacpp q8_0"]
    assert sources["llamacpp:q8_0"]["extra"]["rounds"].startswith("llama.cpp with Q8_0 weights")
    text = (out / "mismatch.md").read_text()
    assert "**llamacpp:q8_0** (engine mismatch: pi_old vs mu)" in text
    assert (out / "mismatch_by_length.png").exists()
