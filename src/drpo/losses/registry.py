"""The registry: loss names -> specs, each carrying everything about its loss.

A family module registers each loss with ``@register_loss(name, HyperClass, summary, ...)``; importing
``drpo.losses`` imports the families, in the order ``drpo losses`` lists them. ``get_loss`` (drpo.losses.wrapper)
binds a name to validated hyper-parameters.

A spec is the one place a loss's facts live; every entry point reads them from it:

- ``boundary``: the hyper-parameters that set its trust-region width, which the adaptive tracker sets
  (drpo.adaptive; the last is the one it reports);
- ``cannot_bind``: a function of its hyper-parameters saying why the trust region cannot bind, with the
  bound on the weight, or None (drpo.losses.checks; ``drpo train``, ``drpo compare``, ``drpo losses``, the adapters);
- ``verl``, ``trl``: how it meets each framework's config (:class:`ConfigMap`; drpo.integrations);
- ``presets``: its named settings, names ``get_loss`` accepts (:class:`Preset`, gathered in ``PRESETS``);
- ``methods``: its entries in the lab's default method list (:class:`LabMethod`; drpo.lab.methods).

Adding a loss is one file: register it with its spec (tests/test_loss_spec.py does, from a test file), and
``drpo losses``, ``drpo compare``, the adaptive boundary, the verl registry and the TRL adapter find it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import pydantic
import torch

from drpo.losses.inputs import LossInputs
from drpo.validation import describe_fields


class Hyper(pydantic.BaseModel):
    """Hyper-parameters shared by every ratio- or mask-based loss."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    anchor: Literal["rollout", "recompute"] = pydantic.Field(
        "rollout",
        description="reference of the ratio and trust region: rollout = mu (behavior policy), "
        "recompute = pi_old (trainer's recomputed log-probs, as decoupled PPO clips)",
    )


# fn(x, hyper) -> (objective J, gradient weight w), each [B, T]: the contract, and what the wrapper does with them,
# in drpo.losses.wrapper
LossFn = Callable[[LossInputs, Hyper], tuple[torch.Tensor, torch.Tensor]]
# hyper -> why the trust region cannot bind at these hyper-parameters, with the bound on the weight; None when it can
CannotBind = Callable[[Hyper], "str | None"]


@dataclass(frozen=True)
class ConfigMap:
    """How a loss meets one framework's config (verl's actor config, TRL's GRPOConfig).

    - ``fields``: our hyper-parameter -> the framework's config field that carries it (verl: the adapter reads
      the hyper-parameters from these fields; TRL: the GRPOConfig fields that mean them in TRL's own loss, which
      DRPOConfig refuses and names this loss instead).
    - ``refused``: set, the adapter does not run this loss and says this (the framework's own version of it,
      or what the framework cannot provide).
    - ``order``: its place among the framework's names (verl: the order they are registered in), ties in
      registration order.
    """

    fields: Mapping[str, str] = field(default_factory=dict)
    refused: str | None = None
    order: float = math.inf


@dataclass(frozen=True)
class Preset:
    """A named setting of the loss that declares it: ``get_loss(name)`` is that loss with ``hyper``. ``order``:
    its place in ``PRESETS`` (and `drpo losses`), ties in registration order."""

    name: str
    hyper: Mapping = field(default_factory=dict)
    order: float = math.inf


@dataclass(frozen=True)
class LabMethod:
    """An entry of the lab's default method list (drpo.lab.methods.METHODS): ``label`` runs
    ``loss`` (the declaring loss's name by default, or one of its aliases or presets) with ``hyper``.
    ``order``: its place in the list, the report's order; ties in registration order."""

    label: str
    hyper: Mapping = field(default_factory=dict)
    loss: str | None = None
    order: float = math.inf


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    hyper: type[Hyper]
    summary: str
    needs_topk: bool = False
    aliases: tuple[str, ...] = ()
    boundary: tuple[str, ...] = ()  # the hyper-parameters that set the trust-region width (drpo.adaptive)
    cannot_bind: CannotBind | None = None  # None: the trust region always binds (or there is none)
    verl: ConfigMap | None = None  # None: not offered to verl
    trl: ConfigMap = field(default_factory=ConfigMap)  # DRPOTrainer runs every loss it does not refuse
    presets: tuple[Preset, ...] = ()
    methods: tuple[LabMethod, ...] = ()


LOSSES: dict[str, LossSpec] = {}
ALIASES: dict[str, str] = {}  # alias -> loss name
PRESETS: dict[str, tuple[str, dict]] = {}  # preset name -> (loss name, hyper-parameters), in `drpo losses`' order


def register_loss(name: str, hyper: type[Hyper], summary: str, aliases: tuple[str, ...] = (), needs_topk: bool = False,
                  *, boundary: tuple[str, ...] = (), cannot_bind: CannotBind | None = None,
                  verl: ConfigMap | None = None, trl: ConfigMap | None = None, presets: tuple[Preset, ...] = (),
                  methods: tuple[LabMethod, ...] = ()):
    """Register a loss family function under ``name`` (and ``aliases``) with everything about it (:class:`LossSpec`;
    the module docstring says who reads what)."""

    def decorator(fn: LossFn) -> LossFn:
        spec = LossSpec(name, fn, hyper, summary, needs_topk, tuple(aliases), tuple(boundary), cannot_bind, verl,
                        trl or ConfigMap(), tuple(presets), tuple(methods))
        _check_new(spec)
        LOSSES[name] = spec
        _gather()
        return fn

    return decorator


def unregister_loss(name: str) -> LossSpec:
    """Remove loss ``name`` with its aliases, presets and methods (a test's loss); returns its spec."""
    spec = LOSSES.pop(name)
    _gather()
    return spec


def _ordered(entries):
    """(spec, entry) pairs of every registered spec, sorted by ``entry.order``, ties in registration order.
    ``entries``: spec -> its entries."""
    pairs = [(spec, entry) for spec in LOSSES.values() for entry in entries(spec)]
    return sorted(pairs, key=lambda pair: pair[1].order)  # stable: registration order among equal orders


def lab_methods() -> dict[str, tuple[str, dict]]:
    """label -> (loss registry name or preset, hyper-parameters): the lab's default methods, declared by the losses."""
    return {m.label: (m.loss or spec.name, dict(m.hyper)) for spec, m in _ordered(lambda s: s.methods)}


def _gather() -> None:
    """Rebuild ALIASES and PRESETS from LOSSES, in place (other modules hold these dicts)."""
    aliases = {alias: spec.name for spec in LOSSES.values() for alias in spec.aliases}
    presets = {p.name: (spec.name, dict(p.hyper)) for spec, p in _ordered(lambda s: s.presets)}
    for table, content in ((ALIASES, aliases), (PRESETS, presets)):
        table.clear()
        table.update(content)


def _check_new(spec: LossSpec) -> None:
    """ValueError when ``spec`` reuses a name, an alias, a preset or a method label, or declares what its own
    hyper-parameters cannot carry."""
    names = [spec.name, *spec.aliases, *(p.name for p in spec.presets)]
    taken = set(LOSSES) | set(ALIASES) | set(PRESETS)
    labels = [m.label for m in spec.methods]
    taken_labels = set(lab_methods())
    for clash in [n for n in names if n in taken or names.count(n) > 1] + [
            label for label in labels if label in taken_labels or labels.count(label) > 1]:
        raise ValueError(f"loss '{clash}' is registered twice" if clash == spec.name else
                         f"loss '{spec.name}': the name '{clash}' is registered twice")
    fields = spec.hyper.model_fields
    declared = [*spec.boundary, *(spec.verl.fields if spec.verl else ()), *spec.trl.fields,
                *(key for p in spec.presets for key in p.hyper), *(key for m in spec.methods for key in m.hyper)]
    if unknown := sorted({key for key in declared if key not in fields}):
        raise ValueError(f"loss '{spec.name}' declares {', '.join(unknown)}, which its hyper-parameters "
                         f"({', '.join(fields)}) do not have")
    own = {spec.name, *spec.aliases, *(p.name for p in spec.presets)}
    if stray := [m.label for m in spec.methods if (m.loss or spec.name) not in own]:
        raise ValueError(f"loss '{spec.name}': method {', '.join(stray)} runs another loss; declare it there")


def hyper_summary(spec: LossSpec) -> str:
    """'delta=0.15, anchor=...': the family's own hyper-parameters first, the shared anchor last."""
    return describe_fields(spec.hyper, last=("anchor",))
