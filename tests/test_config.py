"""Config: defaults, YAML plus overrides, and errors that name the key and the allowed values."""

from pathlib import Path

import pytest
import yaml

from drpo.config import ConfigError, config_changes, help_text, load_config
from drpo.losses.quadratic import DrpoHyper


def test_defaults_and_overrides(tmp_path):
    cfg = load_config()
    assert cfg.loss.name == "drpo" and cfg.task.name == "arith"
    # the default run is off-policy, as in the paper: low-precision rollouts, several updates per batch anchored on mu
    assert (cfg.rollout.precision, cfg.updates_per_batch, cfg.rollout.lag, cfg.loss.build().hyper.anchor) == (
        "bf16", 4, 0, "rollout")
    path = tmp_path / "run.yaml"
    path.write_text("loss: dppo_binary_tv\nsteps: 7\nrollout:\n  lag: 2\n")
    cfg = load_config(path, ["loss.delta_high=0.2", "model=tiny", "rollout.precision=fp8", "updates_per_batch=4"])
    assert cfg.loss.name == "dppo_binary_tv" and cfg.loss.hyper == {"delta_high": 0.2}
    assert cfg.loss.build().hyper.delta_high == 0.2
    assert (cfg.steps, cfg.rollout.lag, cfg.rollout.precision, cfg.model.name, cfg.updates_per_batch) == (
        7, 2, "fp8", "tiny", 4)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["loss=spo", "loss.eps=0.3", "seed=3"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    loaded = load_config(path)
    assert config_changes(yaml.safe_load(cfg.to_yaml()), loaded) == {}
    assert loaded.loss.build().hyper == cfg.loss.build().hyper and loaded.seed == 3


def test_a_run_records_every_loss_hyper_so_a_new_default_does_not_re_mean_it(tmp_path):
    """config.yaml writes the defaults out: a run made at delta 0.5 without saying so stays a delta-0.5 run
    when the default moves, and resuming or reusing it under the new default is refused."""
    saved = yaml.safe_load(load_config(None, ["loss=drpo_reference"]).to_yaml())
    assert saved["loss"] == {"name": "drpo_reference", "aggregation": "token-mean", "horizon": None,
                             "delta": 12.5, "anchor": "rollout"}
    saved = yaml.safe_load(load_config(None, ["loss=drpo"]).to_yaml())
    assert saved["loss"]["delta"] == DrpoHyper.model_fields["delta"].default
    saved["loss"]["delta"] = 0.15  # as if written when 0.15 was the default
    assert config_changes(saved, load_config(None, ["loss=drpo"])) == {
        "loss.delta": (0.15, DrpoHyper.model_fields["delta"].default)}
    assert config_changes(saved, load_config(None, ["loss=drpo", "loss.delta=0.15"])) == {}
    del saved["loss"]["delta"], saved["loss"]["anchor"]  # a run saved before hyper-parameters were written out
    assert config_changes(saved, load_config(None, ["loss=drpo"])) == {}
    assert list(config_changes(saved, load_config(None, ["loss=ppo_clip"]))) == [
        "loss.delta", "loss.eps_high", "loss.eps_low", "loss.name"]


def test_a_run_saved_before_late_evaluations_existed_is_not_taken_for_one_that_had_them():
    """Runs published before eval.late_every evaluated every eval.every steps only: under today's default they
    differ (reuse would mix evaluation schedules), and match once the schedule is set back."""
    saved = yaml.safe_load(load_config(None, []).to_yaml())
    del saved["eval"]["late_every"], saved["eval"]["late_fraction"]
    assert config_changes(saved, load_config(None, [])) == {"eval.late_every": (None, 10)}
    assert config_changes(saved, load_config(None, ["eval.late_every=null"])) == {}


@pytest.mark.parametrize(("override", "message"), [
    ("stepz=3", "unknown key 'stepz'.*steps=100"),
    ("rollout.precision=fp4", "'rollout.precision' got 'fp4'.*'bf16'.*'fp8'"),
    ("rollout.bogus=1", "unknown key 'rollout.bogus'.*precision="),
    ("loss=foo", "unknown loss 'foo'.*drpo"),
    ("loss.eps=0.1", "loss 'drpo': unknown key 'eps'.*delta"),
    ("loss.delta=-1", "'delta' got -1"),
    ("steps=-1", "'steps' got -1.*greater than or equal to 0"),
    ("steps=abc", "'steps' got 'abc'"),
    ("advantage.estimator=ppo", "'grpo'.*'rloo'"),
    ("no_equals_sign", "not key=value"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_and_help():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")
    text = help_text()
    for key in ("out=", "steps=", "seed=", "loss.name", "loss.<hyper>", "model.name", "task.name",
                "rollout.precision=", "rollout.engine=", "rollout.lag=", "updates_per_batch=", "resume="):
        assert key in text


def test_late_evaluations_are_denser_counted_back_from_the_end():
    config = load_config(None, ["steps=100"])
    assert [s for s in range(1, 101) if config.eval.due(s, 100)] == [20, 40, 60, 70, 80, 90, 100]
    config = load_config(None, ["eval.late_every=null"])
    assert [s for s in range(1, 101) if config.eval.due(s, 100)] == [20, 40, 60, 80, 100]
    config = load_config(None, ["eval.every=25", "eval.late_every=5", "eval.late_fraction=0.1"])
    assert [s for s in range(1, 51) if config.eval.due(s, 50)] == [25, 45, 50]
    with pytest.raises(ConfigError, match="late_fraction"):
        load_config(None, ["eval.late_fraction=1.5"])
    with pytest.raises(ConfigError, match="late_every"):
        load_config(None, ["eval.late_every=0"])


def test_a_saved_loss_that_no_longer_validates_is_said_not_swallowed():
    saved = yaml.safe_load(load_config(None, ["loss=drpo"]).to_yaml())
    saved["loss"]["eps"] = 0.2  # a key this drpo does not know
    with pytest.warns(UserWarning, match="(?s)do not validate with this drpo.*unknown key 'eps'"):
        changes = config_changes(saved, load_config(None, ["loss=drpo"]))
    assert "loss.eps" in changes


def test_the_precision_is_one_the_engine_runs():
    with pytest.raises(ConfigError, match=r"rollout.precision='fp8' is not run by rollout.engine=llamacpp; it runs "
                       r"f32, f16, q8_0, q4_0 \(fp8 is run by rollout.engine=native\)"):
        load_config(None, ["rollout.engine=llamacpp", "rollout.precision=fp8"])
    with pytest.raises(ConfigError, match="rollout.precision='q8_0' is not run by rollout.engine=native; it runs "
                       "fp32, bf16, fp16, fp8, int8, fp8_all"):
        load_config(None, ["rollout.precision=q8_0"])
    with pytest.raises(ConfigError, match="rollout.precision='int8' is not run by rollout.engine=vllm; it runs "
                       "fp32, bf16, fp16"):
        load_config(None, ["rollout.engine=vllm", "rollout.precision=int8"])
    with pytest.raises(ConfigError, match="'rollout.engine' got 'onnx'.*'native'.*'vllm'.*'llamacpp'"):
        load_config(None, ["rollout.engine=onnx"])


LLAMA = ["model.arch=llama"]  # llama.cpp runs llama-architecture models: the built-in model's llama variant


def test_an_engine_alone_runs_its_default_mode_and_the_run_records_it(tmp_path):
    config = load_config(None, ["rollout.engine=llamacpp", *LLAMA])
    assert (config.rollout.engine, config.rollout.precision) == ("llamacpp", "f16")
    saved = yaml.safe_load(config.to_yaml())
    assert saved["rollout"]["engine"] == "llamacpp" and saved["rollout"]["precision"] == "f16"
    assert "backend" not in saved["rollout"]
    assert load_config(None, ["rollout.engine=llamacpp", "rollout.precision=q4_0", *LLAMA]).rollout.precision == "q4_0"
    assert load_config(None, ["rollout.engine=vllm"]).rollout.precision == "bf16"
    assert (load_config().rollout.engine, load_config().rollout.precision) == ("native", "bf16")
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert config_changes(saved, load_config(path)) == {}
    assert config_changes(saved, load_config(None, ["rollout.engine=llamacpp", "rollout.precision=f16", *LLAMA])) == {}
    assert config_changes(saved, load_config(None, [*LLAMA])) == {"rollout.engine": ("llamacpp", "native"),
                                                            "rollout.precision": ("f16", "bf16")}


def test_llama_cpp_and_vllm_keys_need_their_engine():
    assert load_config(None, ["rollout.engine=llamacpp", "rollout.llamacpp_threads=4", *LLAMA]).rollout.llamacpp_threads == 4
    with pytest.raises(ConfigError, match="llamacpp_threads applies only to rollout.engine=llamacpp"):
        load_config(None, ["rollout.llamacpp_threads=4"])
    with pytest.raises(ConfigError, match="'rollout.llamacpp_threads' got 0"):
        load_config(None, ["rollout.engine=llamacpp", "rollout.llamacpp_threads=0"])
    with pytest.raises(ConfigError, match="vllm_gpu_memory applies only to rollout.engine=vllm"):
        load_config(None, ["rollout.vllm_gpu_memory=0.5"])
    with pytest.raises(ConfigError, match="rollout.engine=vllm does not take it"):
        load_config(None, ["rollout.engine=vllm", "rollout.stop=[</answer>]"])


def test_a_run_saved_when_the_engine_was_called_backend_loads_and_resumes(tmp_path):
    """Published runs' config.yaml say rollout.backend: native; they load, and compare equal to today's config."""
    from drpo.config import check_resume

    saved = yaml.safe_load(load_config(None, ["model=tiny"]).to_yaml())
    rollout = saved["rollout"]
    saved["rollout"] = {**{k: v for k, v in rollout.items() if k not in ("engine", "llamacpp_threads")},
                        "backend": rollout["engine"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    loaded = load_config(path)
    assert (loaded.rollout.engine, loaded.rollout.precision) == ("native", "bf16")
    assert config_changes(saved, loaded) == {}
    check_resume(saved, load_config(path, [f"resume={tmp_path}", "steps=200"]))
    assert config_changes(saved, load_config(path, ["rollout.engine=vllm"])) == {
        "rollout.engine": ("native", "vllm")}  # a file's backend, overridden on the command line
    assert load_config(None, ["rollout.backend=llamacpp", *LLAMA]).rollout.precision == "f16"
    published = Path(__file__).resolve().parents[1] / "docs/results/smollm2/config.yaml"  # saved before `engine`
    assert "backend: native" in published.read_text() and load_config(published).rollout.engine == "native"


def test_top_k_logprobs_default_lives_in_the_config():
    assert load_config(None, ["loss=dppo_topk_tv"]).top_k_logprobs == 8
    assert load_config(None, ["loss=dppo_topk_tv", "rollout.top_k_logprobs=4"]).top_k_logprobs == 4
    assert load_config(None, ["loss=drpo"]).top_k_logprobs == 0


def test_llamacpp_needs_a_llama_architecture():
    with pytest.raises(ConfigError, match="model.arch=llama"):
        load_config(None, ["rollout.engine=llamacpp"])
    assert load_config(None, ["rollout.engine=llamacpp", "model=smollm2-135m"]).rollout.engine == "llamacpp"


def test_each_list_of_allowed_values_is_the_one_its_implementation_reads():
    """A key's choices in the config are the tuple the implementing module dispatches on, not a copy that can drift."""
    import typing

    from drpo import advantages, metrics
    from drpo.behavior import modes
    from drpo.config import AdvantageConfig, LossConfig, ModelConfig, RolloutConfig, RunConfig
    from drpo.losses import AGGREGATIONS
    from drpo.models import hf

    def choices(section, key):
        return typing.get_args(section.model_fields[key].annotation)

    assert choices(RolloutConfig, "precision") == tuple(modes.ROLLOUT_MODES)
    assert choices(RolloutConfig, "engine") == modes.ENGINES
    assert choices(LossConfig, "aggregation") == AGGREGATIONS
    assert choices(AdvantageConfig, "estimator") == advantages.ESTIMATORS
    assert choices(ModelConfig, "dtype") == tuple(hf.DTYPES)
    assert typing.get_args(choices(RunConfig, "report_to")[0]) == metrics.TRACKERS
    with pytest.raises(ConfigError, match="'advantage.estimator' got 'ppo'; input should be 'grpo' or 'rloo'"):
        load_config(None, ["advantage.estimator=ppo"])


def test_the_config_imports_no_implementation():
    """Reading a config needs neither torch nor the task readers: the values it shares with them are in drpo.constants."""
    import subprocess
    import sys

    code = "import sys, drpo.config; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('drpo.tasks')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
