"""Named off-policy conditions of the stress test: each is a list of trainer overrides, i.e. a real
mechanism of drpo.trainer / drpo.rollout (DESIGN.md, "Off-policy conditions"), never a simulation.

A plain dict, meant to be edited: add a preset, tune one (e.g. a larger lag), and `drpo compare
--conditions NAME ...` picks it up. User overrides on the command line (`steps=60`) apply after a
condition's own, and the method's `loss=...` after both.
"""

from __future__ import annotations

CONDITIONS: dict[str, dict] = {
    "fp32": {"about": "baseline: fp32 rollouts, one update per batch, no lag (on-policy up to float noise)",
             "overrides": []},
    "bf16": {"about": "training-inference mismatch: the behavior policy runs in bfloat16",
             "overrides": ["rollout.precision=bf16"]},
    "fp8": {"about": "training-inference mismatch as fp8 serving runs it: a bf16 behavior policy whose Linear "
                     "layers round weights and activations through float8_e4m3 (embedding and head bf16)",
            "overrides": ["rollout.precision=fp8"]},
    "fp8_all": {"about": "harsher fp8 (the first published sweep's `fp8`): fp32 behavior policy with every Linear, "
                         "the tied embedding and output head included, rounded through float8_e4m3",
                "overrides": ["rollout.precision=fp8_all"]},
    "int8": {"about": "training-inference mismatch: a bf16 behavior policy with W8A8 int8 Linear layers (head bf16)",
             "overrides": ["rollout.precision=int8"]},
    "stale": {"about": "staleness: 4 optimizer steps per rollout batch, rollouts from weights 2 steps old",
              "overrides": ["updates_per_batch=4", "rollout.lag=2"]},
    "stale_strong": {"about": "strong staleness: 8 optimizer steps per rollout batch, rollouts 4 steps old",
                     "overrides": ["updates_per_batch=8", "rollout.lag=4"]},
    "moe_bf16": {"about": "mixture-of-experts model with bf16 rollouts (low precision can flip routing)",
                 "overrides": ["model.moe=true", "rollout.precision=bf16"]},
    "scale": {"about": "model scale: the medium transformer (~10.6M parameters), fp32 rollouts",
              "overrides": ["model=medium"]},
}


def get_conditions(names: list[str] | None) -> dict[str, dict]:
    """The named presets in the order given (default: all); an unknown name lists the valid ones."""
    names = names or list(CONDITIONS)
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(unknown)}. Valid conditions: {', '.join(CONDITIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"conditions given twice: {' '.join(names)}")
    return {name: CONDITIONS[name] for name in names}
