"""The methods a sweep compares: a label, a loss registry name (or preset) and its hyper-parameters.

    parse_method("drpo")              -> the default entry: drpo at the recommended delta (drpo.losses.DRPO_DELTA)
    parse_method("drpo:delta=0.3")    -> drpo with delta=0.3, labelled "drpo:delta=0.3"
    parse_method("dppo_topk_tv")      -> any registry name or preset of drpo.losses, default hyper-parameters
    parse_method("ppo_clip:eps_high=0.28,dual_clip=3")
    parse_method("drpo:adaptive_delta.enabled=true,adaptive_delta.multiple=2")  # delta set from the mismatch

A spec is ``NAME[:key=value,key=value...]``; NAME is a label of :data:`METHODS` (its hyper-parameters
are the base, the spec's override them) or any name ``get_loss`` accepts. Hyper-parameters are validated
by the loss registry, so a typo stops before any run starts, naming the valid keys. A dotted key is a
trainer setting the method carries (:data:`TRAINER_SECTIONS`), validated with the trainer's config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from drpo.losses.registry import lab_methods


class _LabMethods(Mapping):
    """label -> (loss registry name or preset, hyper-parameters): the lab's default methods, in the report's order.

    Each loss declares its own entries where it is registered (``methods=`` of drpo.losses.register_loss, e.g.
    ``drpo`` at the recommended delta and ``drpo_reference`` at the public reference's 12.5 in
    drpo.losses.quadratic); this view reads them from the registry at each use, so a loss registered later
    (a plugin's, a test's) is in the list."""

    def __getitem__(self, label: str) -> tuple[str, dict]:
        return lab_methods()[label]

    def __iter__(self) -> Iterator[str]:
        return iter(lab_methods())

    def __len__(self) -> int:
        return len(lab_methods())

    def __repr__(self) -> str:
        return f"METHODS({lab_methods()!r})"


METHODS: Mapping[str, tuple[str, dict]] = _LabMethods()

# The trainer settings a method may carry besides its loss: those that set the loss's boundary while it trains.
# Everything else about a run (model, rollouts, optimizer, evaluation) is the condition's and the sweep's, the same
# for every method, so that the methods of a (condition, seed) differ in how they bound the update and nothing else.
TRAINER_SECTIONS = ("adaptive_delta",)

HEADLINE_LOSS = "drpo"  # the report's verdict compares every method on this loss with every other method


@dataclass(frozen=True)
class Method:
    label: str  # name in tables, figures and the run directory
    loss: str  # registry name or preset given to `loss=`
    hyper: dict = field(default_factory=dict, hash=False)
    trainer: dict = field(default_factory=dict, hash=False)  # dotted trainer settings (TRAINER_SECTIONS)

    @property
    def slug(self) -> str:
        """Directory name: the label with ':' and ',' (awkward in paths) replaced."""
        return self.label.replace(":", "_").replace(",", "_")

    def overrides(self) -> list[str]:
        """Trainer overrides that select this loss: ``loss=NAME loss.KEY=VALUE ...``, then its trainer settings."""
        return [f"loss={self.loss}", *(f"loss.{key}={_text(value)}" for key, value in self.hyper.items()),
                *(f"{key}={_text(value)}" for key, value in self.trainer.items())]

    def build(self):
        from drpo.losses import get_loss

        return get_loss(self.loss, **self.hyper)

    @property
    def canonical(self) -> str:
        """The registry name behind the label (presets and aliases resolved): 'drpo', 'ppo_clip', ..."""
        return self.build().name

    def to_dict(self) -> dict:
        # no "trainer" key when there are none: sweep.yaml files written before methods carried any stay as they were
        entry = {"loss": self.loss, "hyper": dict(self.hyper)}
        return {**entry, "trainer": dict(self.trainer)} if self.trainer else entry


def parse_method(spec: str) -> Method:
    """``NAME[:key=value,...]`` -> :class:`Method` (validated by the loss registry and, for trainer settings, the
    trainer's config)."""
    from drpo.config import load_config, parse_value

    name, _, rest = spec.strip().partition(":")
    if not name or "/" in spec:
        raise ValueError(f"method '{spec}': expected NAME or NAME:key=value,... (e.g. drpo:delta=0.3)")
    hyper: dict = {}
    trainer: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"method '{spec}': '{item}' is not key=value (e.g. drpo:delta=0.3)")
        if "." in key and key.split(".")[0] not in TRAINER_SECTIONS:
            raise ValueError(f"method '{spec}': '{key}' is a trainer setting; a method may carry only "
                             f"{', '.join(s + '.*' for s in TRAINER_SECTIONS)} (how its boundary is set). Settings "
                             "for every method go after the methods (e.g. drpo compare --methods drpo spo steps=60)")
        (trainer if "." in key else hyper)[key] = parse_value(text.strip())
    if name in METHODS:
        loss, base = METHODS[name]
        method = Method(spec.strip() if hyper or trainer else name, loss, {**base, **hyper}, trainer)
    else:
        method = Method(spec.strip(), name, hyper, trainer)
    method.build()  # ValueError naming the valid losses or hyper-parameters
    if trainer:
        load_config(None, method.overrides())  # ConfigError naming the valid keys, or what the loss cannot carry
    return method


def parse_methods(specs: list[str] | None) -> list[Method]:
    """Specs -> methods (default: all of :data:`METHODS`); duplicate labels are an error."""
    methods = [parse_method(spec) for spec in (specs or list(METHODS))]
    slugs = [m.slug for m in methods]
    duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
    if duplicates:
        raise ValueError(f"methods given twice: {', '.join(duplicates)}")
    return methods


def _text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
