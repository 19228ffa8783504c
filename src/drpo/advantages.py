"""Group-relative advantages: one value per response, shared by all its tokens.

    rewards [N] with group_index [N] (which prompt each response answers)  ->  advantages [N]

- grpo: reward minus its group's mean, optionally divided by the group's std (Dr. GRPO drops it);
- rloo: reward minus the mean of the *other* responses of its group (leave-one-out baseline),
        which equals G/(G-1) times the GRPO advantage without std division.
A group whose responses all got the same reward gets advantage 0: it carries no learning signal.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo")


def group_advantages(rewards: torch.Tensor, group_index: torch.Tensor, estimator: str = "grpo",
                     std_normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Advantages [N] of responses with ``rewards`` [N] in groups given by ``group_index`` [N].

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator '{estimator}'. Valid: {', '.join(ESTIMATORS)}")
    if rewards.shape != group_index.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index {tuple(group_index.shape)} must both be [N]")
    groups = int(group_index.max()) + 1 if len(group_index) else 0
    rewards = rewards.float()
    count = torch.zeros(groups, dtype=rewards.dtype).index_add_(0, group_index, torch.ones_like(rewards))  # [G]
    total = torch.zeros(groups, dtype=rewards.dtype).index_add_(0, group_index, rewards)
    mean = (total / count.clamp(min=1))[group_index]  # [N]
    if estimator == "rloo":
        size = count[group_index]
        return torch.where(size > 1, (rewards - mean) * size / (size - 1).clamp(min=1), torch.zeros_like(rewards))
    advantages = rewards - mean
    if std_normalize:
        square = torch.zeros(groups, dtype=rewards.dtype).index_add_(0, group_index, advantages.square())
        std = (square / (count - 1).clamp(min=1)).sqrt()[group_index]
        advantages = advantages / (std + eps)
    return advantages
