"""The learning-rate schedule (lr_lambda): linear warm-up, then constant or cosine to 0, and a resumed run
asked for more steps stretching the rest of the cosine; factors computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from drpo.config import load_config
from drpo.optim import lr_lambda


def factors(warmup: int, schedule: str, total: int, updates) -> list[float]:
    config = load_config(None, [f"optim.warmup_steps={warmup}", f"optim.schedule={schedule}"])
    factor = lr_lambda(config.optim, total)
    return [factor(u) for u in updates]


def test_warm_up_is_linear_then_the_rate_is_constant():
    assert factors(4, "constant", 20, range(6)) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert factors(4, "constant", 20, [19, 40]) == [1.0, 1.0]
    assert factors(0, "constant", 20, [0]) == [1.0]


def test_cosine_falls_from_1_to_0_over_the_updates_after_warm_up():
    # warm-up 4, then 20 updates of cosine: 0.5 * (1 + cos(pi * (u - 4) / 20))
    got = factors(4, "cosine", 24, [0, 3, 4, 9, 14, 19, 24, 30])
    expected = [0.25, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0]
    assert got == pytest.approx(expected, abs=1e-12)  # and it stays at 0 past the end, never rises again
    assert factors(0, "cosine", 10, [0, 5]) == pytest.approx([1.0, 0.5])


def test_a_resumed_run_asked_for_more_steps_stretches_the_rest_of_the_cosine():
    """The trainer rebuilds the scheduler with the new total and loads the old one's state (its update count):
    the rate continues from where the run stopped along the longer cosine, not the old one."""
    config = load_config(None, ["optim.warmup_steps=0", "optim.schedule=cosine"])
    param = torch.nn.Parameter(torch.zeros(1))
    first = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=1.0), lr_lambda(config.optim, 10))
    for _ in range(6):
        first.optimizer.step()
        first.step()
    assert first.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 10)))
    resumed = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=1.0), lr_lambda(config.optim, 20))
    resumed.load_state_dict(first.state_dict())
    resumed.optimizer.step()
    resumed.step()
    assert resumed.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 20)))  # 0.727, not 0.345
