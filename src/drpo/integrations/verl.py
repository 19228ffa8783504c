"""verl adapter: our losses as verl policy losses, registered when verl is imported.

``pip install drpo[verl]`` declares the entry point ``[project.entry-points."verl.plugins"]
drpo = "drpo.integrations.verl"``; ``import verl`` loads every ``verl.plugins`` entry point, and
importing this module registers into verl's policy-loss registry every loss whose spec maps it to verl's
actor config (``verl=ConfigMap({...})`` at its ``register_loss``, drpo.losses.registry; gathered in
``VERL_HYPER_FIELDS``). After that ``actor_rollout_ref.actor.policy_loss.loss_mode=drpo`` works like any
built-in loss; a loss registered later is offered by calling :func:`register` again.

Each registered function has verl's signature and reduction: it computes ``drpo.losses`` on the
tensors verl passes, multiplies by ``rollout_is_weights`` when verl passes them (as verl's own
losses do), and reduces with verl's ``agg_loss`` and ``config.global_batch_info``, so the loss
does not change with the data-parallel size or the micro-batch split.

Anchor: verl hands a policy loss one reference log-prob, ``old_log_prob``. With
``algorithm.rollout_correction.bypass_mode=true`` (v1 trainer) it *is* the rollout engine's log-prob
mu, so the trust region is anchored on mu as docs/method.md describes; without bypass it is pi_old, recomputed
by the trainer (the "recompute" anchor). The adapter passes it as ``rollout_log_prob``.

No silent defaults: verl's trust-region fields default to PPO's values (clip_ratio 0.2, clip_ratio_c 3.0),
not ours. At the first call of each setting the adapter logs the bound loss and the verl field each
hyper-parameter came from, and warns for each field still at verl's own default, with our recommended value
and the override that sets it (``hyper_from_config``), and when the trust region cannot bind
(drpo.losses.checks).

Not registered, each loss saying why in its spec (``verl=ConfigMap(refused=...)``, gathered in
``NOT_REGISTERED``): the Top-K DPPO variants (verl's policy-loss call carries no logits and its rollout
records no top-k log-probs, so they cannot work honestly), names verl already owns (``cispo``, ``gspo``),
and ``decoupled_ppo`` with its presets, which is verl's own rollout correction.

TRL in the same environment breaks verl's engine (not our losses): see ``trl_conflict``, which this
module reports as a warning whenever verl loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import warnings
from typing import Any

import torch
from verl.trainer.ppo import core_algos

from drpo.losses import LOSSES, LossSpec, cannot_bind, get_loss, resolved
from drpo.mismatch.dump import env_dump

logger = logging.getLogger(__name__)

# Our loss name -> {our hyper-parameter: the verl ActorConfig field that carries it}, and loss name -> why it is not
# registered: both declared by the losses (their specs' ``verl``), gathered here by ``register``. verl's config
# schema is closed (unknown keys are rejected), so the hyper-parameters ride on its existing trust-region fields,
# with the meaning verl's own dppo_tv / dppo_kl give them: clip_ratio* hold the trust-region width (a probability
# shift for the TV losses, a KL for Binary-KL) and clip_ratio_c holds the importance-ratio truncation C.
VERL_HYPER_FIELDS: dict[str, dict[str, str]] = {}
NOT_REGISTERED: dict[str, str] = {}


def _offered(spec: LossSpec) -> bool:
    return spec.verl is not None and spec.verl.refused is None


def hyper_from_config(name: str, config: Any) -> dict[str, Any]:
    """Read our hyper-parameters for loss ``name`` from a verl ActorConfig (or DictConfig); the first time a
    setting is read, log it with the verl field of each value and warn about verl defaults (:func:`check_hyper`)."""
    hyper = {}
    for ours, field in LOSSES[name].verl.fields.items():
        value = config.get(field, None)
        if value is None:
            raise ValueError(f"verl loss_mode '{name}': {ours} comes from actor config field '{field}', which is "
                             "not set; set actor_rollout_ref.actor." + field)
        hyper[ours] = value
    key = (name, tuple(sorted(hyper.items())))
    if key not in _ANNOUNCED:  # once per setting, not on every micro-batch
        _ANNOUNCED.add(key)
        resolved_line, warnings_ = check_hyper(name, hyper)
        logger.warning("drpo: verl loss_mode '%s' runs %s", name, resolved_line)  # WARNING: verl hides INFO
        for message in warnings_:
            logger.warning("drpo: %s", message)
    return hyper


_ANNOUNCED: set[tuple] = set()


def verl_defaults() -> dict[str, Any]:
    """verl's own ActorConfig defaults of the fields our hyper-parameters ride on (PPO's values, not ours)."""
    defaults = _actor_defaults()
    return {field: defaults[field] for spec in VERL_HYPER_FIELDS.values() for field in spec.values()
            if field in defaults}


@functools.cache
def _actor_defaults() -> dict[str, Any]:
    from verl.workers.config import ActorConfig  # lazy: verl, read only when its defaults are compared

    return {f.name: f.default for f in dataclasses.fields(ActorConfig)}


def check_hyper(name: str, hyper: dict[str, Any]) -> tuple[str, list[str]]:
    """(the bound loss and the verl field each hyper-parameter came from, the warnings): one per field still at
    verl's own default where ours differs, naming our recommended value and the override that sets it, and
    one when the trust region cannot bind."""
    loss = get_loss(name, **hyper)
    fields = LOSSES[name].verl.fields
    ours = LOSSES[name].hyper.model_fields
    found = []
    for key, field in fields.items():
        recommended = ours[key].default
        if hyper[key] == _actor_defaults().get(field) and hyper[key] != recommended:
            found.append(f"loss_mode '{name}': {key}={hyper[key]} is verl's own default for actor.{field} (PPO's "
                         f"setting), not drpo's: the recommended {key} is {recommended}, set "
                         f"actor_rollout_ref.actor.{field}={recommended}")
    if (message := cannot_bind(loss)) is not None:
        found.append(message)
    return resolved(loss, {key: f"actor.{field}" for key, field in fields.items()}), found


@functools.lru_cache(maxsize=64)
def _bound_loss(name: str, hyper_items: tuple):
    return get_loss(name, **dict(hyper_items))


def make_policy_loss(name: str):
    """A verl PolicyLossFn computing our loss ``name`` (hyper-parameters from the actor config)."""

    def policy_loss(
        old_log_prob: torch.Tensor,  # [B, T] verl's anchor: mu in bypass mode, pi_old otherwise
        log_prob: torch.Tensor,  # [B, T] current policy, requires grad
        advantages: torch.Tensor,  # [B, T]
        response_mask: torch.Tensor,  # [B, T] bool or 0/1
        loss_agg_mode: str = "token-mean",
        config=None,
        rollout_is_weights: torch.Tensor | None = None,  # [B, T] decoupled-mode IS weights, or None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if config is None:
            raise ValueError(f"verl loss_mode '{name}' needs the actor config (for its hyper-parameters)")
        loss = _bound_loss(name, tuple(sorted(hyper_from_config(name, config).items())))
        # float32 at least: a bf16 copy of mu would itself be a training-inference mismatch
        dtype = torch.promote_types(log_prob.dtype, torch.float32)
        anchor = old_log_prob.detach().to(dtype)  # [B, T]
        out = loss(
            log_prob=log_prob.to(dtype),
            rollout_log_prob=anchor,
            old_log_prob=anchor,
            advantages=advantages.detach().to(dtype),
            response_mask=response_mask,
        )
        dump = env_dump()  # $DRPO_DUMP_LOG_PROBS=FILE: this call's tokens, for `drpo mismatch`
        if dump is not None:
            # verl hands a policy loss one reference log-prob, never mu beside pi_old: the rollout_log_prob column
            # is verl's old_log_prob, mu only in bypass mode; with IS weights (decoupled mode) it is surely pi_old
            held = "pi_old (decoupled mode)" if rollout_is_weights is not None else "mu in bypass mode, else pi_old"
            dump.write(rollout_log_prob=anchor, log_prob=log_prob, mask=response_mask, advantages=advantages,
                       engine=f"verl: rollout_log_prob column = verl's old_log_prob = {held}")
        per_token = out.per_token  # [B, T]
        if rollout_is_weights is not None:
            per_token = per_token * rollout_is_weights
        # verl's ppo_loss fills global_batch_info (dp_size, global token / sequence counts, the norm
        # horizon) before each call; called directly, the norm horizon still comes from the config
        batch_info = {"loss_scale_factor": config.get("loss_scale_factor", None),
                      **(config.get("global_batch_info", None) or {})}
        pg_loss = core_algos.agg_loss(
            loss_mat=per_token, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **batch_info
        )
        metrics = {f"actor/{key}": value for key, value in out.metrics.items()}
        mask = response_mask.to(dtype)  # verl's ppo_kl: mean of log(anchor / pi) over valid tokens
        metrics["actor/ppo_kl"] = (((anchor - log_prob.detach()) * mask).sum() / mask.sum().clamp(min=1)).item()
        return pg_loss, metrics

    policy_loss.__name__ = f"drpo_{name}_policy_loss"
    policy_loss.__qualname__ = policy_loss.__name__
    policy_loss.__doc__ = f"drpo.losses '{name}' as a verl policy loss ({LOSSES[name].summary})."
    policy_loss._drpo_loss_name = name  # marks the function as ours (re-registration is then a no-op)
    return policy_loss


def register() -> list[str]:
    """Register our losses into verl's policy-loss registry, as their specs map them (``verl=``); returns the names
    now registered as ours, and refreshes ``VERL_HYPER_FIELDS`` and ``NOT_REGISTERED``.

    A name verl (or another plugin) already owns is left alone, with a warning. Called again, it registers the losses
    registered since and drops ours whose loss is gone (unregistered, or no longer offered to verl).
    """
    offered = sorted((spec for spec in LOSSES.values() if _offered(spec)), key=lambda spec: spec.verl.order)
    VERL_HYPER_FIELDS.clear()
    VERL_HYPER_FIELDS.update({spec.name: dict(spec.verl.fields) for spec in offered})
    NOT_REGISTERED.clear()
    NOT_REGISTERED.update({name: spec.verl.refused for name, spec in LOSSES.items()
                           if spec.verl is not None and spec.verl.refused is not None})
    for name, existing in list(core_algos.POLICY_LOSS_REGISTRY.items()):
        if getattr(existing, "_drpo_loss_name", None) == name and name not in VERL_HYPER_FIELDS:
            del core_algos.POLICY_LOSS_REGISTRY[name]
    _bound_loss.cache_clear()  # a name may now be another loss
    registered = []
    for name in VERL_HYPER_FIELDS:
        existing = core_algos.POLICY_LOSS_REGISTRY.get(name)
        if existing is not None and getattr(existing, "_drpo_loss_name", None) != name:
            logger.warning("drpo: verl already has a policy loss named '%s'; not replacing it", name)
            continue
        if existing is None:
            core_algos.register_policy_loss(name)(make_policy_loss(name))
        registered.append(name)
    return registered


def trl_conflict() -> str | None:
    """Why verl's FSDP engine cannot be built here because of TRL, or None when it can.

    verl 0.9's ``apply_monkey_patch`` (verl/models/transformers/monkey_patch.py), run on every model
    its FSDP engine builds, imports ``AutoModelForCausalLMWithValueHead`` from ``trl.experimental.ppo``,
    else from ``trl``, whenever TRL is importable. TRL 1.x has neither, so building verl's actor raises
    ImportError. This runs the same two look-ups.
    """
    if importlib.util.find_spec("trl") is None:
        return None
    for module in ("trl.experimental.ppo", "trl"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trl.experimental warns on import that it is experimental
            try:
                if hasattr(importlib.import_module(module), "AutoModelForCausalLMWithValueHead"):
                    return None
            except ImportError:
                continue
    return (f"TRL {importlib.metadata.version('trl')} is installed beside verl {importlib.metadata.version('verl')}: "
            "verl's FSDP engine imports AutoModelForCausalLMWithValueHead from trl.experimental.ppo or trl whenever "
            "TRL is importable (verl/models/transformers/monkey_patch.py) and this TRL has neither, so building "
            "verl's actor raises ImportError. Train with verl in an environment without TRL (pip uninstall trl); "
            "keep drpo[trl] in another environment.")


REGISTERED = register()
if (_TRL_CONFLICT := trl_conflict()) is not None:
    logger.warning("drpo: %s", _TRL_CONFLICT)
