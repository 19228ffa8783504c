"""drpo.diagnostics: the gradient of a loss split into its policy-gradient part (w = 1) and pull part (w - 1),
checked against the gradients written out by hand from docs/method.md's weight (Eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from drpo.config import load_config
from drpo.diagnostics import pull_gradient_norms
from drpo.losses import aggregate, get_loss
from drpo.metrics import read_metrics
from drpo.trainer import Trainer


def test_parts_by_hand_with_log_pi_as_the_parameter():
    """mu = 0.5, 0.5; pi = 0.6, 0.4; A = +1; delta = 0.2; token-mean over 2 tokens.

    r = 1.2, 0.8 and w = 1 - (pi - mu)/delta = 0.5, 1.5. Per token d/d log pi:
    policy-gradient part -r*A/2 = (-0.6, -0.4), norm sqrt(0.52); pull part -(w-1)*r*A/2 = (0.3, -0.2), norm sqrt(0.13).
    """
    log_pi = torch.tensor([[0.6, 0.4]], dtype=torch.float64).log().requires_grad_()
    mask = torch.ones(1, 2)
    out = get_loss("drpo", delta=0.2)(log_prob=log_pi, rollout_log_prob=torch.full((1, 2), 0.5).double().log(),
                                      advantages=torch.tensor([1.0], dtype=torch.float64), response_mask=mask)
    norms = pull_gradient_norms([log_pi], log_pi, out, torch.tensor([1.0], dtype=torch.float64), mask,
                                "token-mean", None)
    assert norms["diagnose/pg_grad_norm"] == pytest.approx(math.sqrt(0.52))
    assert norms["diagnose/pull_grad_norm"] == pytest.approx(math.sqrt(0.13))
    assert norms["diagnose/pull_to_pg"] == pytest.approx(0.5)
    # the graph is kept: the loss's own gradient, -w*r*A/2 = (-0.3, -0.6), is the sum of the two parts
    (grad,) = torch.autograd.grad(aggregate(out.per_token, mask), log_pi)
    torch.testing.assert_close(grad, torch.tensor([[-0.3, -0.6]], dtype=torch.float64))


def test_no_pull_on_policy_and_for_the_plain_policy_gradient():
    log_pi = torch.tensor([[0.3, 0.9, 0.5]], dtype=torch.float64).log().requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    for name, mu in (("drpo", log_pi.detach()), ("pg_is", torch.tensor([[0.2, 0.7, 0.1]]).double().log())):
        out = get_loss(name)(log_prob=log_pi, rollout_log_prob=mu, advantages=torch.tensor([-2.0]).double(),
                             response_mask=mask)
        norms = pull_gradient_norms([log_pi], log_pi, out, torch.tensor([-2.0]).double(), mask, "seq-mean-token-sum",
                                    None)
        assert norms["diagnose/pull_grad_norm"] == 0 and norms["diagnose/pg_grad_norm"] > 0, name


def test_no_reward_variance_no_ratio():
    log_pi = torch.tensor([[0.3, 0.9]], dtype=torch.float64).log().requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    out = get_loss("drpo")(log_prob=log_pi, rollout_log_prob=torch.tensor([[0.2, 0.7]]).double().log(),
                           advantages=zero, response_mask=mask)
    norms = pull_gradient_norms([log_pi], log_pi, out, zero, mask, "token-mean", None)
    assert norms == {"diagnose/pg_grad_norm": 0.0, "diagnose/pull_grad_norm": 0.0}


@pytest.mark.slow
def test_the_trainer_logs_both_parts_once_per_step(tmp_path):
    config = load_config(None, ["model=tiny", "warmup.steps=20", "warmup.target_accuracy=null", "steps=2",
                                "rollout.prompts=4", "rollout.group_size=4", "updates_per_batch=2",
                                "rollout.precision=bf16", "eval.prompts=8", "eval.samples=0", "tensorboard=false",
                                "diagnose_pull=true", f"out={tmp_path / 'run'}"])
    trainer = Trainer(config)
    trainer.task.reward = lambda text, example: float(len(text) % 2)  # some reward signal from an untrained model
    trainer.train()
    steps = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    for record in steps:
        assert record["diagnose/pg_grad_norm"] > 0 and record["diagnose/pull_grad_norm"] > 0
        assert record["diagnose/pull_to_pg"] == pytest.approx(
            record["diagnose/pull_grad_norm"] / record["diagnose/pg_grad_norm"])
        assert record["eval/prompts"] == 8 if "eval/accuracy" in record else True
