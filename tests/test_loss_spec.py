"""Adding a loss is one file: a loss registered here, with its spec, is found by every entry point.

The losses below are registered by this file alone (no other module is edited): their spec says everything about
them (the hyper-parameter that sets the trust region's width, when it cannot bind, how verl's and TRL's configs
carry it, a preset, entries of the lab's method list), and `drpo losses`, `drpo compare`, the trainer's config, the
adaptive boundary, drpo.losses.checks, the verl registry and the TRL adapter find them. The fixture unregisters
them afterwards, so no other test sees them.
"""

from __future__ import annotations

import re
import sys
import warnings
from types import SimpleNamespace

import pydantic
import pytest
import torch

from drpo.losses import (
    ALIASES,
    LOSSES,
    PRESETS,
    ConfigMap,
    Hyper,
    LabMethod,
    LossInputs,
    Preset,
    aggregate,
    cannot_bind,
    get_loss,
    register_loss,
    unregister_loss,
)

NAME = "ppo_clip_sym"  # offered everywhere
LOOSE = "ppo_clip_sym_loose"  # its preset, too wide to bind
REFUSED = "pg_framework_owned"  # a loss both frameworks ship themselves: refused by both adapters
VERL_REFUSAL = "verl ships its own pg_framework_owned (a test's loss)"
TRL_REFUSAL = "TRL ships its own pg_framework_owned (a test's loss): use GRPOTrainer"


class SymHyper(Hyper):
    eps: float = pydantic.Field(0.2, gt=0.0, le=5.0, description="clip r to [1 - eps, 1 + eps]")


def sym_cannot_bind(h: SymHyper) -> str | None:
    if h.eps < 1:
        return None
    return (f"eps={h.eps:g} >= 1: r > 0 never falls below 1 - eps, so a token pushed down is never clipped "
            "(a test loss's check)")


def ppo_clip_sym(x: LossInputs, h: SymHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clip with one width both ways: J_t = min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t), w_t = 0 where
    clipped the way A_t pushes, else 1."""
    r = x.ratio
    clipped = ((r > 1 + h.eps) & x.pushed_up) | ((r < 1 - h.eps) & x.pushed_down)
    objective = torch.where(clipped, r.clamp(1 - h.eps, 1 + h.eps), r) * x.advantages
    return objective, (~clipped).to(r.dtype)


def pg_framework_owned(x: LossInputs, h: Hyper) -> tuple[torch.Tensor, torch.Tensor]:
    return x.ratio * x.advantages, torch.ones_like(x.ratio)


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the test losses (all this file adds); unregister them, and drop them from verl's registry, after."""
    before = (list(LOSSES), dict(ALIASES), dict(PRESETS))
    register_loss(
        NAME, SymHyper, "test: PPO clip with one width eps both ways", aliases=("sym_clip",),
        boundary=("eps",), cannot_bind=sym_cannot_bind,
        verl=ConfigMap({"eps": "clip_ratio"}), trl=ConfigMap({"eps": "epsilon"}),
        presets=(Preset(LOOSE, {"eps": 1.5}),),
        methods=(LabMethod(NAME), LabMethod(LOOSE, loss=LOOSE)),
    )(ppo_clip_sym)
    register_loss(REFUSED, Hyper, "test: a loss both frameworks ship", verl=ConfigMap(refused=VERL_REFUSAL),
                  trl=ConfigMap(refused=TRL_REFUSAL))(pg_framework_owned)
    yield
    unregister_loss(NAME)
    unregister_loss(REFUSED)
    if "drpo.integrations.verl" in sys.modules:  # this file registered them into verl's registry: drop them
        sys.modules["drpo.integrations.verl"].register()
    assert (list(LOSSES), dict(ALIASES), dict(PRESETS)) == before


def random_batch(batch: int = 5, length: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(batch, length, generator=g, dtype=torch.float64) * 0.9 + 0.05  # [B, T]
    pi = (mu + 0.6 * (torch.rand(batch, length, generator=g, dtype=torch.float64) - 0.5)).clamp(1e-3, 0.999)
    mask = torch.arange(length)[None, :] < torch.randint(1, length + 1, (batch,), generator=g)[:, None]  # [B, T]
    advantages = torch.randn(batch, 1, generator=g, dtype=torch.float64).expand(batch, length).clone()
    return pi.log().requires_grad_(), mu.log(), advantages, mask


# --- the library ---------------------------------------------------------------------------------------------------


def test_registry_holds_the_loss_its_alias_and_its_preset():
    assert get_loss("sym_clip").name == NAME and get_loss(LOOSE).hyper.eps == 1.5
    assert get_loss(LOOSE, eps=0.4).hyper.eps == 0.4
    log_prob, mu, advantages, mask = random_batch()
    out = get_loss(NAME, eps=0.1)(log_prob=log_prob, rollout_log_prob=mu, advantages=advantages, response_mask=mask)
    assert 0 < out.metrics["loss/masked_frac"] < 1  # some tokens clipped, some not
    with pytest.raises(ValueError, match="registered twice"):
        register_loss(NAME, SymHyper, "again")(ppo_clip_sym)
    with pytest.raises(ValueError, match=f"the name '{LOOSE}' is registered twice"):
        register_loss("another", SymHyper, "clash", presets=(Preset(LOOSE),))(ppo_clip_sym)
    with pytest.raises(ValueError, match="declares delta, which its hyper-parameters"):
        register_loss("another", SymHyper, "bad boundary", boundary=("delta",))(ppo_clip_sym)
    with pytest.raises(ValueError, match="method stray runs another loss"):
        register_loss("another", SymHyper, "stray", methods=(LabMethod("stray", loss="ppo_clip"),))(ppo_clip_sym)
    assert "another" not in LOSSES  # a refused registration leaves nothing behind


def test_checks_say_when_it_cannot_bind():
    assert cannot_bind(get_loss(NAME)) is None
    message = cannot_bind(get_loss(LOOSE))
    assert message.startswith(f"get_loss('{NAME}', anchor='rollout', eps=1.5): eps=1.5 >= 1")


def test_drpo_losses_lists_it_with_its_preset_and_warning(capsys):
    from drpo.cli import main

    assert main(["losses"]) == 0
    raw = capsys.readouterr().out
    names = set(re.findall(r"^\S (\w+)", raw, flags=re.MULTILINE))
    assert {NAME, LOOSE, REFUSED} <= names
    out = " ".join(raw.split())
    assert f"warning ({LOOSE}): get_loss('{NAME}', anchor='rollout', eps=1.5): eps=1.5 >= 1" in out


# --- the lab -------------------------------------------------------------------------------------------------------


def test_drpo_compare_lists_and_runs_its_methods(capsys):
    from drpo.cli import main
    from drpo.lab.methods import METHODS, parse_method, parse_methods

    assert main(["compare", "--list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^  {NAME} +loss={NAME}$", listing, flags=re.MULTILINE), listing
    assert re.search(rf"^  {LOOSE} +loss={LOOSE}$", listing, flags=re.MULTILINE), listing
    # after the published methods, whose order (the report's) is unchanged
    assert list(METHODS)[-2:] == [NAME, LOOSE] and list(METHODS)[:2] == ["pg_is", "cispo"]
    assert [m.label for m in parse_methods(None)][-2:] == [NAME, LOOSE]
    method = parse_method(f"{NAME}:eps=0.3")
    assert (method.loss, method.hyper, method.build().hyper.eps) == (NAME, {"eps": 0.3}, 0.3)
    assert parse_method(LOOSE).build().hyper.eps == 1.5
    assert parse_method(f"{NAME}:adaptive_delta.enabled=true").trainer == {"adaptive_delta.enabled": True}


def test_trainer_config_and_adaptive_boundary_read_its_spec():
    from drpo.adaptive import DeltaTracker, boundary
    from drpo.config import ConfigError, load_config

    config = load_config(None, [f"loss={LOOSE}", "loss.eps=0.3"])
    assert config.loss.build().hyper.eps == 0.3 and config.recorded()["loss"]["eps"] == 0.3
    assert boundary(get_loss(NAME, eps=0.35)) == 0.35
    tracker = DeltaTracker(quantile=0.5, multiple=2.0, ema=0.0, min_delta=0.05, max_delta=1.0)
    tracker.observe(torch.tensor([[0.6, 0.7]]).log(), torch.tensor([[0.5, 0.5]]).log(), torch.ones(1, 2))
    assert tracker.apply(get_loss(NAME)).hyper.eps == pytest.approx(0.3)  # 2 x the median gap 0.15
    assert load_config(None, [f"loss={NAME}", "adaptive_delta.enabled=true"]).adaptive_delta.enabled
    with pytest.raises(ConfigError, match=f"boundary of drpo, drpo_clipped, dppo_binary_tv, {NAME}; loss=ppo_clip"):
        load_config(None, ["loss=ppo_clip", "adaptive_delta.enabled=true"])
    with pytest.raises(ConfigError, match=f"max_delta must be <= 5 for {NAME}"):  # its eps's own bound (le=5)
        load_config(None, [f"loss={NAME}", "adaptive_delta.enabled=true", "adaptive_delta.max_delta=6"])


# --- the frameworks ------------------------------------------------------------------------------------------------


def test_verl_registers_it_from_its_spec():
    pytest.importorskip("verl", reason="verl is not installed (pip install -e '.[verl]' -c constraints.txt)")
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn

    from drpo.integrations import verl as adapter

    registered = adapter.register()  # the loss came after `import verl`: registering again offers it
    assert registered[-1] == NAME and registered[:4] == ["drpo", "spo", "dppo_binary_tv", "dppo_binary_kl"]
    assert adapter.VERL_HYPER_FIELDS[NAME] == {"eps": "clip_ratio"}
    assert adapter.NOT_REGISTERED[REFUSED] == VERL_REFUSAL and REFUSED not in POLICY_LOSS_REGISTRY
    policy_loss = get_policy_loss_fn(NAME)
    assert policy_loss._drpo_loss_name == NAME

    log_prob, mu, advantages, mask = random_batch(seed=1)
    config = {"clip_ratio": 0.15}  # what the actor config's field holds; the loss reads eps from it
    loss, metrics = policy_loss(old_log_prob=mu, log_prob=log_prob, advantages=advantages, response_mask=mask,
                                loss_agg_mode="token-mean", config=config)
    out = get_loss(NAME, eps=0.15)(log_prob=log_prob, rollout_log_prob=mu, advantages=advantages, response_mask=mask)
    expected = aggregate(out.per_token, mask, "token-mean")
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    (grad,) = torch.autograd.grad(loss, log_prob)
    (expected_grad,) = torch.autograd.grad(expected, log_prob)
    assert torch.allclose(grad, expected_grad, atol=1e-12)
    assert metrics["actor/loss/masked_frac"] == pytest.approx(out.metrics["loss/masked_frac"])
    line, found = adapter.check_hyper(NAME, {"eps": 1.5})
    assert "eps from actor.clip_ratio" in line and any("eps=1.5 >= 1" in message for message in found)


def test_trl_adapter_runs_it_and_names_it(tmp_path):
    pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[trl]' -c constraints.txt)")
    from drpo.integrations.trl import DRPOConfig, DRPOTrainer

    def config(**overrides):
        return DRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)

    args = config(drpo_loss=NAME, drpo_loss_kwargs={"eps": 0.15})
    with pytest.warns(UserWarning, match="eps=1.5 >= 1"):
        config(drpo_loss=LOOSE)
    with pytest.raises(ValueError, match=re.escape(f"drpo_loss='{REFUSED}': {TRL_REFUSAL}")):
        config(drpo_loss=REFUSED)
    # TRL's own epsilon is refused, naming the losses whose specs say which of their hyper-parameters it means
    with pytest.raises(ValueError, match=re.escape(f"TRL's epsilon are drpo_loss='{NAME}' with drpo_loss_kwargs="
                                                   "{'eps': ...}")):
        config(epsilon=0.3)

    # DRPOTrainer's per-token loss on TRL's tensors (mu = sampling log-probs) is the registered loss
    log_prob, mu, advantages, mask = random_batch(seed=2)
    trainer = SimpleNamespace(drpo_loss=get_loss(args.drpo_loss, **args.drpo_loss_kwargs), log_prob_dump=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = DRPOTrainer.drpo_per_token(trainer, log_prob, {"sampling_per_token_logps": mu,
                                                             "advantages": advantages[:, 0]}, mask)
    expected = get_loss(NAME, eps=0.15)(log_prob=log_prob, rollout_log_prob=mu, advantages=advantages,
                                        response_mask=mask)
    assert torch.equal(out.per_token, expected.per_token) and out.metrics == expected.metrics
