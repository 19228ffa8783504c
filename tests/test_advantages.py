"""Group-relative advantages against hand-computed values."""

import pytest
import torch

from drpo.advantages import group_advantages


def test_grpo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = group_advantages(rewards, groups, "grpo")
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    std = torch.tensor([1.0, 0.0, 0.0]).std()  # unbiased, as the group std
    adv = group_advantages(rewards, groups, "grpo", std_normalize=True)
    torch.testing.assert_close(adv[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-6))
    assert (adv[3:] == 0).all()


def test_rloo_is_leave_one_out():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0])
    groups = torch.tensor([0, 0, 0, 1])
    adv = group_advantages(rewards, groups, "rloo")
    torch.testing.assert_close(adv, torch.tensor([1.0 - 0.0, 0.0 - 0.5, 0.0 - 0.5, 0.0]))


def test_bad_estimator():
    with pytest.raises(ValueError, match="grpo, rloo"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), "ppo")
