"""Policy losses of the divergence-aware trust-region family, registered by name.

    from drpo.losses import get_loss, aggregate
    loss = get_loss("drpo")                      # the recommended delta (DRPO_DELTA); delta=... to change it
    out = loss(log_prob=..., rollout_log_prob=..., advantages=..., response_mask=...)
    aggregate(out.per_token, response_mask, mode="token-mean").backward()

One module per family: ratio.py (pg_is, ppo_clip/grpo, cispo), quadratic.py (spo, drpo),
dppo.py (Binary-TV/KL and Top-K masks), decoupled.py (decoupled PPO with a rollout correction, GSPO);
aggregate.py reduces, base.py holds the contract.
"""

# isort: off
# importing registers the losses, in the order `drpo losses` lists them
from drpo.losses import ratio, quadratic, dppo, decoupled  # noqa: F401
# isort: on
from drpo.losses.aggregate import AGGREGATIONS, aggregate
from drpo.losses.base import ALIASES, LOSSES, Loss, LossInputs, LossOutput, LossSpec, get_loss, register_loss
from drpo.losses.checks import cannot_bind, resolved, warn_if_cannot_bind
from drpo.losses.presets import PRESETS
from drpo.losses.quadratic import DRPO_DELTA
from drpo.losses.weights import weight_curve

__all__ = [
    "AGGREGATIONS", "ALIASES", "DRPO_DELTA", "LOSSES", "PRESETS", "Loss", "LossInputs", "LossOutput", "LossSpec",
    "aggregate", "cannot_bind", "get_loss", "register_loss", "resolved", "warn_if_cannot_bind", "weight_curve",
]
