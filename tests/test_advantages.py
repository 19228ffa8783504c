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


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("std_normalize", [False, True])
def test_every_tensor_follows_the_rewards_device(estimator, std_normalize):
    """Rewards on an accelerator (trainer.py puts them on the model's device): no CPU buffer may meet them.

    'meta' is a non-CPU device every machine has; mixing it with a CPU tensor raises as CUDA would. It
    holds no values, so the number of groups is given rather than read from group_index.
    """
    rewards = torch.empty(6, device="meta")
    groups = torch.empty(6, dtype=torch.long, device="meta")
    adv = group_advantages(rewards, groups, estimator, std_normalize=std_normalize, num_groups=2)
    assert adv.device == rewards.device and adv.shape == (6,)


def test_num_groups_given_or_read():
    rewards, groups = torch.tensor([1.0, 0.0, 3.0, 1.0]), torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(group_advantages(rewards, groups, num_groups=2), group_advantages(rewards, groups))
    with pytest.raises(ValueError, match="num_groups"):
        group_advantages(rewards, groups, num_groups=0)
