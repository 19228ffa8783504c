"""Whether a run may continue, or be written, where it is asked to: the comparison of a saved config with a new one.

    check_out(config)                      # refuse an ``out`` that holds another run
    check_resume(saved_config, config)     # refuse to resume under other settings, naming them
    check_steps(done, config)              # refuse a resume that would not continue the run
    config_changes(saved_config, config)   # {key: (saved, now)} for every setting that differs
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from drpo.config.load import ConfigError
from drpo.config.run import RunConfig, with_resolved_loss

RESUME_MAY_CHANGE = ("steps", "out", "resume", "report_to", "tensorboard")  # trackers do not change the experiment


def check_resume(saved: dict, config: RunConfig) -> None:
    """Refuse to resume a run whose checkpoint (config ``saved``) was made with other settings, naming them.

    A resumed run must continue the same experiment: a new learning rate or loss hyper-parameter would
    silently change it mid-run. Only ``steps`` (to extend the run; with optim.schedule=cosine the rest of the
    schedule stretches to the new total) and ``out`` may change.
    """
    changed = [f"{key}: {before!r} -> {now!r}" for key, (before, now) in config_changes(saved, config).items()
               if key not in RESUME_MAY_CHANGE]
    if changed:
        raise ConfigError(f"resume={config.resume}: the checkpoint was made with other settings; a resumed run may "
                          f"change only steps (to extend it) and out. Changed: {'; '.join(changed)}")


def check_steps(done: int, config: RunConfig) -> None:
    """Refuse a resume that would not continue its run: ``steps`` below the ``done`` steps of the checkpoint (the
    record would claim a shorter run), or equal to them into another directory (nothing to continue there)."""
    if config.steps < done:
        raise ConfigError(f"resume={config.resume}: the run already did {done} steps, more than steps={config.steps}; "
                          f"give steps={done} or more (to extend it), or leave steps out")
    if config.steps == done and Path(config.resume).resolve() != Path(config.out).resolve():
        raise ConfigError(f"resume={config.resume} out={config.out}: the run already did its {done} steps, so there "
                          f"is nothing to continue in {config.out}; give steps=N > {done} to extend it there")


# Fields whose default changed what a run does when they were added: a run saved before them ran as this value
# says, not as today's default (runs evaluated every eval.every steps only had no late evaluations).
BEFORE_THE_FIELD: dict[str, Any] = {"eval.late_every": None}
# Keys renamed since a run was saved: {old dotted key: new one}; a saved run is compared under the new names.
RENAMED = {"rollout.backend": "rollout.engine"}
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")  # what makes a directory hold a run


def check_out(config: RunConfig) -> None:
    """Refuse a run into an ``out`` that holds another run (a new run, or one resumed from elsewhere), which it
    would overwrite: metrics.jsonl truncated, config.yaml replaced, TensorBoard's events mixed with the old ones."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={config.out} is a file; out names the run's directory: give a new directory")
    if config.resume is not None and Path(config.resume).resolve() == out.resolve():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise ConfigError(f"out={config.out} already holds a run ({', '.join(found)}); continue that run with "
                          f"resume={config.out} (and steps=N to extend it), or give this one a new directory with "
                          "out=DIR (or delete the old one first)")


def config_changes(saved: dict, config: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, value in ``config``)} for every setting that differs. A key missing on one
    side counts as its default (for the fields of BEFORE_THE_FIELD, in a saved run: as what the run did before the
    field existed), so a run saved before a field existed matches a config that would do what it did."""
    defaults = _flatten(RunConfig().model_dump(mode="json"))
    try:
        before = _flatten(with_resolved_loss(saved))
    except ValueError as error:  # pydantic's ValidationError included
        # a loss this drpo no longer accepts (renamed, or a key dropped): compared as written, so its keys show as
        # changes, and said why
        warnings.warn(f"the saved run's loss settings {saved.get('loss')} do not validate with this drpo, so they "
                      f"are compared as written: {error}", stacklevel=2)
        before = _flatten(saved)
    before = {RENAMED.get(key, key): value for key, value in before.items()}
    now = _flatten(config.recorded())
    saved_defaults = {**defaults, **BEFORE_THE_FIELD}
    pairs = {key: (before.get(key, saved_defaults.get(key)), now.get(key, defaults.get(key)))
             for key in sorted(set(before) | set(now))}
    if not pairs["adaptive_delta.enabled"][0] and not pairs["adaptive_delta.enabled"][1]:
        # switched off on both sides, its constants change nothing the run does (a new default included)
        pairs = {key: pair for key, pair in pairs.items() if not key.startswith("adaptive_delta.")}
    return {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-4}} -> {'optim.lr': 1e-4}"""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
