"""Typed, validated run configuration: YAML files plus ``key=value`` overrides.

    drpo train                                   # the defaults of the sections
    drpo train loss=dppo_binary_tv loss.delta_high=0.2 rollout.precision=fp8 steps=300
    drpo train --config my.yaml updates_per_batch=4

Each section owns its defaults (no ``cfg.get(key, default)`` anywhere else). A key that names a
section with a ``name`` field sets that name: ``loss=spo`` is ``loss.name=spo``, ``model=medium``
is ``model.name=medium``. An unknown key or a bad value stops before any work, naming the key and
the allowed values.

One module per job: sections.py and task.py (the typed sections), run.py (RunConfig, the checks across
sections), load.py (YAML and overrides into a RunConfig), resume.py (a saved config against a new one),
help.py (``drpo train --help``).
"""

from drpo.config.help import help_text
from drpo.config.load import ConfigError, apply_override, load_config, parse_value, validate
from drpo.config.resume import check_out, check_resume, check_steps, config_changes
from drpo.config.run import RunConfig
from drpo.config.sections import (
    TOPK_LOSS_LOGPROBS,
    AdaptiveDeltaConfig,
    AdvantageConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    WarmupConfig,
)
from drpo.config.task import TaskConfig

__all__ = [
    "TOPK_LOSS_LOGPROBS", "AdaptiveDeltaConfig", "AdvantageConfig", "ConfigError", "EvalConfig", "LossConfig",
    "ModelConfig", "OptimConfig", "RolloutConfig", "RunConfig", "TaskConfig", "WarmupConfig", "apply_override",
    "check_out", "check_resume", "check_steps", "config_changes", "help_text", "load_config", "parse_value", "validate",
]
