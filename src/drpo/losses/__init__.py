"""Policy losses of the divergence-aware trust-region family, registered by name.

    from drpo.losses import get_loss, aggregate
    loss = get_loss("drpo")                      # the recommended delta (DRPO_DELTA); delta=... to change it
    out = loss(log_prob=..., rollout_log_prob=..., advantages=..., response_mask=...)
    aggregate(out.per_token, response_mask, mode="token-mean").backward()

One module per family: ratio.py (pg_is, ppo_clip/grpo, cispo), quadratic.py (spo, drpo), dppo.py
(Binary-TV/KL and Top-K masks), decoupled.py (decoupled PPO with a rollout correction, GSPO). Each loss declares
everything about itself where it is registered (its boundary, when it cannot bind, its verl and TRL mapping,
its presets and its entries in the lab's method list: registry.py), so adding a loss is one file. What they
share, one job per module: registry.py (names -> specs, and the presets they declare), inputs.py (LossInputs
and its cached tensors), input_checks.py (the checks of a call's tensors), metrics.py (the statistics every
loss reports), wrapper.py (the Loss object and get_loss: masking, the per-token loss and its analytic
gradient; the conventions every loss relies on are stated there), aggregate.py (per-token losses -> one
scalar), checks.py (a trust region that cannot bind), weights.py (weight curves for plots).
"""

# isort: off
# importing registers the losses, in the order `drpo losses` lists them
from drpo.losses import ratio, quadratic, dppo, decoupled  # noqa: F401
# isort: on
from drpo.losses.aggregate import AGGREGATIONS, aggregate
from drpo.losses.checks import cannot_bind, resolved, warn_if_cannot_bind
from drpo.losses.inputs import LossInputs
from drpo.losses.metrics import METRIC_KEYS
from drpo.losses.quadratic import DRPO_DELTA
from drpo.losses.registry import (
    ALIASES,
    LOSSES,
    PRESETS,
    ConfigMap,
    Hyper,
    LabMethod,
    LossSpec,
    Preset,
    hyper_summary,
    register_loss,
    unregister_loss,
)
from drpo.losses.weights import weight_curve
from drpo.losses.wrapper import Loss, LossOutput, get_loss

__all__ = [
    "AGGREGATIONS", "ALIASES", "DRPO_DELTA", "LOSSES", "METRIC_KEYS", "PRESETS", "ConfigMap", "Hyper", "LabMethod",
    "Loss", "LossInputs", "LossOutput", "LossSpec", "Preset", "aggregate", "cannot_bind", "get_loss", "hyper_summary",
    "register_loss", "resolved", "unregister_loss", "warn_if_cannot_bind", "weight_curve",
]
