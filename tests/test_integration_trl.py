"""The TRL adapter against real TRL: a tiny random-initialised model and tokenizer built here, no downloads."""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[trl]' -c constraints.txt)")

from datasets import Dataset  # noqa: E402  (datasets and transformers come with TRL)
from tiny_letters import letter_model, letter_tokenizer  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from drpo.integrations.trl import (  # noqa: E402
    TRL_MIRRORED,
    DRPOConfig,
    DRPOTrainer,
    forward_input_keys,
    trl_drift,
)
from drpo.losses import aggregate, get_loss  # noqa: E402

OUR_METRICS = ["loss/weight_mean", "loss/corrective_frac", "loss/masked_frac", "ratio/max", "shift/abs_mean"]


@pytest.fixture(scope="module")
def tokenizer():
    return letter_tokenizer()


def count_a(completions, **kwargs) -> list[float]:
    """Reward: how often the letter 'a' appears, so the group advantages are not all zero."""
    return [completion.count("a") / 8 for completion in completions]


def make_trainer(tokenizer, tmp_path, **overrides) -> DRPOTrainer:
    settings = dict(
        output_dir=str(tmp_path), drpo_loss="drpo", drpo_loss_kwargs={"delta": 0.15},
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        # one generation batch feeds two optimizer steps, so the second step is off-policy (pi != mu)
        steps_per_generation=2, max_steps=2, learning_rate=1e-2,
        use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", seed=0,
    )
    args = DRPOConfig(**{**settings, **overrides})
    dataset = Dataset.from_dict({"prompt": ["a b c", "d e f", "g h", "i j a"] * 2})
    return DRPOTrainer(model=letter_model(), reward_funcs=count_a, args=args, train_dataset=dataset,
                       processing_class=tokenizer)


@pytest.mark.parametrize("loss, kwargs", [
    ("drpo", {"delta": 0.15}),
    ("dppo_binary_tv", {}),
    ("spo", {"eps": 0.2}),
    ("ppo_clip", {"anchor": "recompute"}),
])
def test_trains_two_steps(tokenizer, tmp_path, loss, kwargs):
    trainer = make_trainer(tokenizer, tmp_path, drpo_loss=loss, drpo_loss_kwargs=kwargs)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()

    steps = [log for log in trainer.state.log_history if "loss" in log]
    assert len(steps) == 2 and all(math.isfinite(log["loss"]) for log in steps)
    unchanged = [name for name, p in trainer.model.named_parameters() if torch.equal(before[name], p)]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    assert all(key in log for key in OUR_METRICS for log in steps)  # our metrics, through TRL's logger
    assert steps[0]["ratio/max"] == pytest.approx(1.0, abs=1e-5)  # first step on-policy
    assert steps[1]["ratio/max"] > 1.0  # second step: mu = TRL's old log-probs, pi has moved


def test_per_token_loss_equals_drpo_losses(tokenizer, tmp_path):
    """mu = sampling log-probs when present (NaN -> pi_old), else old log-probs, else log_prob detached."""
    trainer = make_trainer(tokenizer, tmp_path)
    g = torch.Generator().manual_seed(0)
    batch, length = 4, 6
    log_prob = (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log().requires_grad_()  # [B, T]
    old = (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log()
    sampling = (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log()
    sampling[0, 2] = float("nan")  # a token vLLM could not score
    advantages = torch.randn(batch, generator=g)  # [B], as TRL stores them
    mask = torch.ones(batch, length)
    mask[1, 4:] = 0
    loss = get_loss("drpo", delta=0.15)

    cases = [
        ({"sampling_per_token_logps": sampling, "old_per_token_logps": old}, torch.where(sampling.isnan(), old, sampling)),
        ({"old_per_token_logps": old}, old),
        ({}, log_prob.detach()),
    ]
    for extra, mu in cases:
        out = trainer.drpo_per_token(log_prob, {"advantages": advantages, **extra}, mask)
        expected = loss(log_prob=log_prob, rollout_log_prob=mu, advantages=advantages[:, None].expand(-1, length),
                        response_mask=mask)
        assert (out.per_token - expected.per_token).abs().max().item() <= 1e-6
        grads = [torch.autograd.grad(o.per_token.sum(), log_prob)[0] for o in (out, expected)]
        assert (grads[0] - grads[1]).abs().max().item() <= 1e-6
        assert out.metrics == pytest.approx(expected.metrics)


@pytest.mark.parametrize("loss_type, mode", [
    ("grpo", "seq-mean-token-mean"), ("bnpo", "token-mean"), ("dr_grpo", "seq-mean-token-sum-norm"), ("dapo", None),
])
def test_respects_trl_loss_normalisation(tokenizer, tmp_path, loss_type, mode):
    """_compute_loss = our per-token loss reduced as TRL's loss_type reduces, accumulation scaling included."""
    trainer = make_trainer(tokenizer, tmp_path, loss_type=loss_type, gradient_accumulation_steps=2,
                           steps_per_generation=4)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop in a real run
    g = torch.Generator().manual_seed(1)
    batch, prompt_len, length = 4, 3, 8
    log_prob = (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log().requires_grad_()
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    inputs = {
        "prompt_ids": torch.zeros(batch, prompt_len, dtype=torch.long), "prompt_mask": torch.ones(batch, prompt_len),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long), "completion_mask": mask,
        "advantages": torch.randn(batch, generator=g),
        "old_per_token_logps": (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log(),
        "num_items_in_batch": torch.tensor(40.0),  # tokens in the whole generation batch
    }
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_prob, torch.zeros(batch, length), None)

    loss = trainer._compute_loss(trainer.model, inputs)
    per_token = get_loss("drpo", delta=0.15)(
        log_prob=log_prob, rollout_log_prob=inputs["old_per_token_logps"],
        advantages=inputs["advantages"][:, None].expand(-1, length), response_mask=mask).per_token
    if mode is None:  # dapo: token sum / (generation-batch tokens / processes * accumulation / steps_per_generation)
        expected = (per_token * mask).sum() / (40.0 * 2 / 4)
    else:
        expected = aggregate(per_token, mask, mode, horizon=length) / 2
    assert abs(loss.item() - expected.item()) <= 1e-6
    grads = [torch.autograd.grad(x, log_prob, retain_graph=True)[0] for x in (loss, expected)]
    assert (grads[0] - grads[1]).abs().max().item() <= 1e-6


def parity_inputs(batch: int = 4, prompt_len: int = 3, length: int = 6, seed: int = 5) -> dict:
    """A batch as GRPOTrainer hands it to _compute_loss: ragged completions, advantages of both signs."""
    g = torch.Generator().manual_seed(seed)

    def log_probs():
        return (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log()

    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return {
        "prompt_ids": torch.zeros(batch, prompt_len, dtype=torch.long), "prompt_mask": torch.ones(batch, prompt_len),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long), "completion_mask": mask,
        "advantages": torch.tensor([1.2, -0.7, 0.4, -1.5]), "num_items_in_batch": torch.tensor(30.0),
        "old_per_token_logps": log_probs(), "ref_per_token_logps": log_probs(), "sampling_per_token_logps": log_probs(),
    }


def neutral(trainer: DRPOTrainer) -> None:
    """Switch off every TRL feature the parity cases turn on."""
    trainer.beta, trainer.top_entropy_quantile, trainer.off_policy_mask_threshold = 0.0, 1.0, None
    trainer.use_vllm, trainer.aux_loss_enabled = False, False


# Each case: DRPOConfig settings, trainer attributes set after start-up (vLLM is not installed here, the tiny model
# is not a MoE, and beta > 0 would load a reference model by name), and what the batch carries besides
# parity_inputs' tensors.
PARITY_CASES = {
    "grpo": ({"loss_type": "grpo"}, {}, {}),
    "bnpo": ({"loss_type": "bnpo"}, {}, {}),
    "dr_grpo": ({"loss_type": "dr_grpo"}, {}, {}),
    "dapo": ({"loss_type": "dapo"}, {}, {}),
    "on-policy": ({"loss_type": "dapo"}, {}, {"old_per_token_logps": None}),
    "beta": ({"loss_type": "grpo"}, {"beta": 0.1}, {}),
    "beta-no-bias-correction": ({"loss_type": "dapo", "use_bias_correction_kl": False}, {"beta": 0.1}, {}),
    "entropy-mask": ({"loss_type": "bnpo", "top_entropy_quantile": 0.5}, {}, {}),
    "off-policy-mask": ({"loss_type": "dr_grpo", "off_policy_mask_threshold": 0.05}, {}, {}),
    "tool-mask": ({"loss_type": "grpo"}, {}, {"tool_mask": torch.tensor([[1, 1, 0, 1, 1, 1]] * 4)}),
    "vllm-is-weight": ({"loss_type": "dapo", "drpo_loss_kwargs": {"anchor": "recompute"}}, {"use_vllm": True},
                       {"importance_sampling_ratio": torch.tensor([[1.3], [0.0], [0.7], [2.2]])}),
    "vllm-off-policy-mask": ({"loss_type": "bnpo", "drpo_loss_kwargs": {"anchor": "recompute"},
                              "off_policy_mask_threshold": 0.05}, {"use_vllm": True},
                             {"importance_sampling_ratio": torch.ones(4, 1)}),
    "moe-aux-loss": ({"loss_type": "bnpo"}, {"aux_loss_enabled": True, "router_aux_loss_coef": 0.01}, {}),
    "all": ({"loss_type": "dapo", "top_entropy_quantile": 0.7, "off_policy_mask_threshold": 0.05},
            {"beta": 0.04, "aux_loss_enabled": True, "router_aux_loss_coef": 0.01},
            {"tool_mask": torch.tensor([[1, 1, 1, 0, 1, 1]] * 4)}),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_matches_trls_own_grpo_loss(tokenizer, tmp_path, case):
    """drpo_loss='ppo_clip' through DRPOTrainer._compute_loss == TRL's own GRPOTrainer._compute_loss on the same
    trainer and tensors: value, gradient and TRL's metrics. The KL, masks, vLLM weight and normalisation are TRL's
    (mirrored), so any drift between TRL's method and the mirror fails here."""
    config, attributes, extra = PARITY_CASES[case]
    trainer = make_trainer(tokenizer, tmp_path, **{"drpo_loss": "ppo_clip", "drpo_loss_kwargs": {},
                                                   "gradient_accumulation_steps": 2, "steps_per_generation": 4,
                                                   **config})
    for name, value in attributes.items():
        setattr(trainer, name, value)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop in a real run
    inputs = {key: value for key, value in {**parity_inputs(), **extra}.items() if value is not None}
    if not trainer.use_vllm:
        del inputs["sampling_per_token_logps"]  # TRL has sampling log-probs only from vLLM (or a rollout_func)
    else:
        inputs["sampling_per_token_logps"][1, 2] = float("nan")  # a token vLLM could not score
    batch, length = inputs["completion_mask"].shape
    g = torch.Generator().manual_seed(6)
    log_prob = (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log()
    log_prob[3] -= 0.5  # pi well below pi_old on a negative-advantage sequence: the off-policy mask drops it
    log_prob.requires_grad_()
    entropies = torch.rand(batch, length, generator=g) * 2
    aux_loss = torch.tensor(0.37)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_prob, entropies, aux_loss)

    def run(compute_loss):
        trainer._metrics["train"].clear()
        loss = compute_loss(trainer, trainer.model, inputs)
        metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
        return loss, torch.autograd.grad(loss, log_prob)[0], metrics

    trl_loss, trl_grad, trl_metrics = run(GRPOTrainer._compute_loss)
    our_loss, our_grad, our_metrics = run(DRPOTrainer._compute_loss)
    assert abs(our_loss.item() - trl_loss.item()) <= 1e-6, f"TRL {trl_loss.item()}, ours {our_loss.item()}"
    assert (our_grad - trl_grad).abs().max().item() <= 1e-6
    shared = {"kl", "entropy", "aux_loss"} & trl_metrics.keys()
    assert shared <= our_metrics.keys()
    assert {key: our_metrics[key] for key in shared} == pytest.approx({key: trl_metrics[key] for key in shared})

    if case not in ("grpo", "bnpo", "dr_grpo", "dapo", "on-policy"):  # the feature is exercised: TRL differs without
        neutral(trainer)
        plain = {key: value for key, value in inputs.items() if key != "tool_mask"}
        assert abs(GRPOTrainer._compute_loss(trainer, trainer.model, plain).item() - trl_loss.item()) > 1e-6


def test_forward_gets_the_model_inputs_trl_passes(tokenizer, tmp_path):
    """Our forward call is TRL's: the same arguments, images and other model inputs included."""
    trainer = make_trainer(tokenizer, tmp_path, drpo_loss="ppo_clip", drpo_loss_kwargs={})
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = parity_inputs()
    del inputs["sampling_per_token_logps"]
    inputs.update({key: f"<{key}>" for key in forward_input_keys()})  # stand-ins, checked by identity
    assert {"pixel_values", "image_grid_thw", "token_type_ids"} <= set(forward_input_keys())
    log_prob = torch.full(inputs["completion_mask"].shape, -1.0, requires_grad=True)
    signature = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies)
    calls = []

    def spy(*args, **kwargs):
        calls.append(signature.bind(trainer, *args, **kwargs).arguments)
        return log_prob, torch.zeros_like(log_prob), None

    trainer._get_per_token_logps_and_entropies = spy
    GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    DRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    trl_call, our_call = calls
    assert trl_call.keys() == our_call.keys()
    for key, value in trl_call.items():
        ours = our_call[key]
        same = torch.equal(value, ours) if isinstance(value, torch.Tensor) else value is ours or value == ours
        assert same, f"the forward's {key}: TRL passes {value!r}, DRPOTrainer {our_call[key]!r}"


# What DRPOTrainer relies on in GRPOTrainer: the method it overrides, the one that calls it, and the TRL methods it
# calls (parameter names, in order; for the forward, the leading ones, the model inputs after them being read from
# its signature).
TRL_SIGNATURES = {
    "_compute_loss": ["self", "model", "inputs"],
    "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
    "_get_per_token_logps_and_entropies": ["self", "model", "input_ids", "attention_mask", "logits_to_keep",
                                           "batch_size", "compute_entropy", "compute_aux_loss"],
    "get_off_policy_mask": ["advantages", "per_token_logps", "sampling_per_token_logps", "mask",
                            "off_policy_threshold"],
    "get_high_entropy_mask": ["self", "entropies", "mask", "threshold"],
}


@pytest.mark.parametrize("name", TRL_SIGNATURES)
def test_trl_seam_signatures_unchanged(name):
    import trl

    expected = TRL_SIGNATURES[name]
    params = list(inspect.signature(getattr(GRPOTrainer, name)).parameters)
    got = params[:len(expected)] if name == "_get_per_token_logps_and_entropies" else params
    assert got == expected, (
        f"TRL {trl.__version__} changed GRPOTrainer.{name}{tuple(params)}; DRPOTrainer (src/drpo/integrations/trl.py) "
        f"was written against TRL {TRL_MIRRORED}'s {tuple(expected)}: check the adapter against TRL {trl.__version__}")


def test_trl_compute_loss_is_the_mirrored_one():
    """GRPOTrainer._compute_loss is the TRL_MIRRORED one: any change to it, however small, fails here first."""
    drift = trl_drift()
    assert drift is None, drift


def test_trainer_warns_when_trl_drifted(tokenizer, tmp_path, monkeypatch):
    import drpo.integrations.trl as adapter

    monkeypatch.setattr(adapter, "TRL_COMPUTE_LOSS_SHA256", "0" * 16)
    with pytest.warns(UserWarning, match=rf"differs from TRL {re.escape(TRL_MIRRORED)}'s.*port the change"):
        make_trainer(tokenizer, tmp_path)


@pytest.mark.parametrize("overrides, message", [
    ({"drpo_loss": "dppo_topk_tv"}, "top-k"),
    ({"drpo_loss": "nope"}, "unknown loss 'nope'"),
    ({"drpo_loss_kwargs": {"delta": -1}}, "delta"),
    ({"drpo_loss_kwargs": '{"eps": 0.2}'}, "unknown key 'eps'"),
    ({"loss_type": "sapo"}, "normalisation"),
    ({"entropy_coef": 0.01}, "entropy"),
    # TRL's own equivalents: the vLLM IS correction, importance_sampling_level="sequence"
    ({"drpo_loss": "ppo_tis"}, "token_truncate = ppo_tis"),
    ({"drpo_loss": "minirl"}, "vllm_importance_sampling_mode"),
    ({"drpo_loss": "gspo"}, "importance_sampling_level='sequence'"),
])
def test_config_rejects_what_cannot_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"epsilon": 0.3}, r"epsilon=0\.3.*drpo_loss_kwargs"),
    ({"epsilon_high": 0.28}, r"epsilon_high=0\.28.*drpo_loss_kwargs"),
    ({"delta": 2.0, "drpo_loss": "dppo_binary_tv"}, r"delta=2\.0.*'dppo_binary_tv' takes .*delta_low"),
    # mu anchor: TRL's pi_old / mu weight is not applied, so shaping it would do nothing
    ({"use_vllm": True, "vllm_importance_sampling_mode": "token_truncate"}, "vllm_importance_sampling_mode"),
    ({"use_vllm": True, "vllm_importance_sampling_clip_max": 5.0}, "recompute"),
    # pi_old anchor: without TRL's weight the sampler's mismatch pi_old / mu would be lost
    ({"use_vllm": True, "vllm_importance_sampling_correction": False, "drpo_loss_kwargs": {"anchor": "recompute"}},
     "vllm_importance_sampling_correction=True"),
])
def test_config_rejects_trl_settings_it_would_ignore(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


def test_config_keeps_trl_settings_it_applies(tmp_path):
    """Under anchor='recompute' TRL's vLLM IS weight is applied, so its mode and bounds are honoured."""
    args = DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", use_vllm=True,
                      drpo_loss_kwargs={"anchor": "recompute"}, vllm_importance_sampling_mode="token_truncate",
                      vllm_importance_sampling_clip_max=2.0)
    assert args.vllm_importance_sampling_mode == "token_truncate"


def recompute_inputs(batch: int = 4, prompt_len: int = 3, length: int = 6, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 3:] = 0
    return {
        "prompt_ids": torch.zeros(batch, prompt_len, dtype=torch.long), "prompt_mask": torch.ones(batch, prompt_len),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long), "completion_mask": mask,
        "advantages": torch.randn(batch, generator=g),
        "old_per_token_logps": (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log(),
        "sampling_per_token_logps": (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log(),
        # TRL's default sequence_mask: one weight per sequence, 0 where the sequence ratio left [C_min, C_max]
        "importance_sampling_ratio": torch.tensor([[1.3], [0.0], [0.7], [2.2]]),
        "num_items_in_batch": torch.tensor(float(mask.sum())),
    }


@pytest.mark.parametrize("anchor", ["recompute", "rollout"])
def test_recompute_anchor_applies_trls_pi_old_over_mu_weight(tokenizer, tmp_path, anchor):
    """anchor='recompute': loss = our loss on r = pi / pi_old, times TRL's IS weight; 'rollout': no weight."""
    trainer = make_trainer(tokenizer, tmp_path, loss_type="bnpo", drpo_loss_kwargs={"delta": 0.15, "anchor": anchor})
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = recompute_inputs()
    batch, length = inputs["completion_mask"].shape
    log_prob = (torch.rand(batch, length, generator=torch.Generator().manual_seed(3)) * 0.98 + 0.01).log()
    log_prob.requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_prob, torch.zeros(batch, length), None)

    loss = trainer._compute_loss(trainer.model, inputs)
    mask = inputs["completion_mask"]
    per_token = get_loss("drpo", delta=0.15, anchor=anchor)(
        log_prob=log_prob, rollout_log_prob=inputs["sampling_per_token_logps"],
        old_log_prob=inputs["old_per_token_logps"], advantages=inputs["advantages"][:, None].expand(-1, length),
        response_mask=mask).per_token
    weight = inputs["importance_sampling_ratio"] if anchor == "recompute" else 1.0
    expected = aggregate(per_token * weight, mask, "token-mean")
    assert abs(loss.item() - expected.item()) <= 1e-6
    grads = [torch.autograd.grad(x, log_prob, retain_graph=True)[0] for x in (loss, expected)]
    assert (grads[0] - grads[1]).abs().max().item() <= 1e-6


def test_recompute_anchor_refuses_mu_without_trls_weight(tokenizer, tmp_path):
    """A rollout_func without vLLM reports mu but TRL computes no pi_old / mu weight: refuse, do not drop it."""
    trainer = make_trainer(tokenizer, tmp_path, drpo_loss_kwargs={"delta": 0.15, "anchor": "recompute"})
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = recompute_inputs()
    del inputs["importance_sampling_ratio"]
    batch, length = inputs["completion_mask"].shape
    log_prob = torch.full((batch, length), -1.0, requires_grad=True)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_prob, torch.zeros(batch, length), None)
    with pytest.raises(ValueError, match="anchor='rollout'"):
        trainer._compute_loss(trainer.model, inputs)


def test_config_takes_json_kwargs(tmp_path):
    args = DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", drpo_loss="dppo_binary_kl",
                      drpo_loss_kwargs='{"delta": 0.1, "trunc": 5}')
    assert args.drpo_loss_kwargs == {"delta": 0.1, "trunc": 5}


def test_example_script_parses_its_command_line(tmp_path):
    """examples/trl/train_drpo.py: every GRPOConfig flag plus ours, from the command line."""
    import importlib.util
    from pathlib import Path

    from transformers import HfArgumentParser

    path = Path(__file__).resolve().parents[1] / "examples" / "trl" / "train_drpo.py"
    spec = importlib.util.spec_from_file_location("train_drpo", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, args = HfArgumentParser((script.ScriptArguments, DRPOConfig)).parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", "--drpo_loss", "dppo_binary_tv",
        "--drpo_loss_kwargs", '{"delta_low": 0.1, "delta_high": 0.2}', "--loss_type", "dr_grpo"])
    assert args.drpo_loss == "dppo_binary_tv" and args.drpo_loss_kwargs == {"delta_low": 0.1, "delta_high": 0.2}
    assert args.loss_type == "dr_grpo"


def test_config_says_where_each_hyper_parameter_came_from(tmp_path, caplog):
    from drpo.losses import DRPO_DELTA

    with caplog.at_level("INFO", logger="drpo.integrations.trl"):
        DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", drpo_loss="dppo_binary_tv",
                   drpo_loss_kwargs='{"delta_high": 0.2}')
    assert [r.getMessage() for r in caplog.records] == [
        f"drpo: DRPOTrainer runs get_loss('drpo', anchor='rollout', delta={DRPO_DELTA}): anchor: drpo's default, "
        "delta: drpo's default",
        "drpo: DRPOTrainer runs get_loss('dppo_binary_tv', anchor='rollout', trunc=20.0, delta_low=0.15, "
        "delta_high=0.2): anchor: drpo's default, trunc: drpo's default, delta_low: drpo's default, delta_high from "
        "drpo_loss_kwargs"]
    with pytest.warns(UserWarning, match="delta=12.5 >= 1, so the trust region cannot bind"):
        DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", drpo_loss="drpo_reference")


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    """One of two gloo processes: rank 1's micro-batch has no valid token (all completions masked)."""
    import os

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked: drop the parent's single-process state
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    trainer = make_trainer(letter_tokenizer(), out_dir, per_device_train_batch_size=2, num_generations=4)
    assert trainer.accelerator.num_processes == 2
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in a real run
    g = torch.Generator().manual_seed(rank)
    batch, length = 2, 4
    log_prob = (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log().requires_grad_()
    mask = torch.full((batch, length), 1 - rank)  # rank 1: every completion masked
    inputs = {
        "prompt_ids": torch.zeros(batch, 2, dtype=torch.long), "prompt_mask": torch.ones(batch, 2),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long), "completion_mask": mask,
        "advantages": torch.tensor([1.0, -1.0]), "num_items_in_batch": torch.tensor(8.0),
        "old_per_token_logps": (torch.rand(batch, length, generator=g) * 0.98 + 0.01).log(),
    }
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_prob, torch.zeros(batch, length), None)
    for _ in range(2):  # the second call's collectives must pair with the other rank's second call
        trainer._compute_loss(trainer.model, inputs)
    trainer.accelerator.wait_for_everyone()
    own = trainer.drpo_per_token(log_prob, inputs, mask).metrics
    logged = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    torch.save({"own": own, "logged": logged}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_processes_one_all_masked_do_not_hang(tmp_path):
    """With two processes, a rank whose micro-batch is all masked still joins the metrics gather."""
    import multiprocessing
    import socket

    # fork, not spawn: a spawned process would import TRL again (seconds each)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_two_rank_worker, args=(rank, port, str(tmp_path))) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    hung = [worker for worker in workers if worker.is_alive()]
    for worker in hung:
        worker.kill()
    assert not hung, "a rank hung in a collective"
    assert [worker.exitcode for worker in workers] == [0, 0]
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert results[1]["own"] == {}  # rank 1 has no valid token: no metrics of its own
    # both ranks log the same values, which are rank 0's: a rank without tokens weighs nothing
    for rank in range(2):
        for key in OUR_METRICS:
            assert results[rank]["logged"][key] == pytest.approx(results[0]["own"][key], rel=1e-5)


def test_nan_sampling_log_probs_are_counted(tokenizer, tmp_path):
    """A NaN sampling log-prob on a valid token falls back to pi_old and is counted in mu/nan_tokens."""
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch, length = 2, 4
    log_prob = torch.full((batch, length), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    sampling = torch.full((batch, length), -1.2)
    sampling[0, 1] = sampling[1, 0] = sampling[1, 3] = float("nan")  # two valid tokens, one padding
    inputs = {
        "prompt_ids": torch.zeros(batch, 2, dtype=torch.long), "prompt_mask": torch.ones(batch, 2),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long), "completion_mask": mask,
        "advantages": torch.tensor([1.0, -1.0]), "num_items_in_batch": torch.tensor(6.0),
        "old_per_token_logps": torch.full((batch, length), -1.1), "sampling_per_token_logps": sampling,
    }
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (log_prob, torch.zeros(batch, length), None)
    trainer._compute_loss(trainer.model, inputs)
    assert trainer._metrics["train"]["mu/nan_tokens"] == [2.0]
