"""Group-relative advantages: one value per response, shared by all its tokens.

    rewards [N] with group_index [N] (which prompt each response answers)  ->  advantages [N]

- grpo: reward minus its group's mean, optionally divided by the group's std (Dr. GRPO drops it);
- rloo: reward minus the mean of the *other* responses of its group (leave-one-out baseline),
        which equals G/(G-1) times the GRPO advantage without std division.
A group whose responses all got the same reward gets advantage 0: it carries no learning signal.
A NaN reward (no reward function applies to that response, as TRL's None) is left out of its group's
baseline and std, and its advantage is 0, as in TRL.
"""

from __future__ import annotations

import torch

from drpo.constants import ESTIMATORS


def group_advantages(rewards: torch.Tensor, group_index: torch.Tensor, estimator: str = "grpo",
                     std_normalize: bool = False, eps: float = 1e-6, num_groups: int | None = None) -> torch.Tensor:
    """Advantages [N] of responses with ``rewards`` [N] in groups given by ``group_index`` [N].

    Every tensor lives on the rewards' device. ``num_groups`` (the number of prompts) defaults to
    group_index.max() + 1, which reads the tensor: a host sync on an accelerator.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator '{estimator}'. Valid: {', '.join(ESTIMATORS)}")
    if rewards.shape != group_index.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index {tuple(group_index.shape)} must both be [N]")
    if num_groups is None:
        num_groups = int(group_index.max()) + 1 if len(group_index) else 0
    elif len(group_index) and num_groups < 1:
        raise ValueError(f"num_groups must be >= 1 (the number of prompts), got {num_groups}")
    rewards = rewards.float()
    group_index = group_index.to(rewards.device)
    scored = ~rewards.isnan()  # [N]
    rewards = torch.where(scored, rewards, torch.zeros_like(rewards))

    def group_sum(values: torch.Tensor) -> torch.Tensor:  # [N] -> [G]
        return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_index, values)

    count = group_sum(scored.float())  # [G] scored responses per group
    mean = (group_sum(rewards) / count.clamp(min=1))[group_index]  # [N]
    if estimator == "rloo":
        size = count[group_index]
        return torch.where(scored & (size > 1), (rewards - mean) * size / (size - 1).clamp(min=1),
                           torch.zeros_like(rewards))
    advantages = torch.where(scored, rewards - mean, torch.zeros_like(rewards))
    if std_normalize:
        std = (group_sum(advantages.square()) / (count - 1).clamp(min=1)).sqrt()[group_index]
        advantages = advantages / (std + eps)
    return advantages
