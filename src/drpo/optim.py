"""The RL phase's optimizer and learning-rate schedule, from the ``optim`` section of the config.

    optimizer, scheduler = build_optimizer(model, config)   # AdamW; warm-up, then constant or cosine

The scheduler steps once per optimizer step, so its horizon is ``steps x updates_per_batch`` updates.
"""

from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, config) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s parameters and its LambdaLR schedule (:func:`lr_lambda`) for a RunConfig."""
    # fused: one pass over each parameter's weight, gradient and moments instead of a dozen foreach passes
    # (SmolLM2-135M: 0.17 s against 0.83 s of CPU per step, and the recipe steps 4 times per batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                  fused=True)
    total_updates = max(1, config.steps * config.updates_per_batch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.optim, total_updates))


def lr_lambda(optim, total_updates: int):
    """The factor of optim.lr at each update (0-based): linear warm-up over ``optim.warmup_steps`` updates, then
    1 (schedule=constant) or a cosine down to 0 at ``total_updates`` (schedule=cosine), 0 after it."""
    warmup, schedule = optim.warmup_steps, optim.schedule

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            progress = (update - warmup) / max(1, total_updates - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor
