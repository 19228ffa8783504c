"""The gradient-weight curves w(pi - mu) the figures draw, at points computed by hand from each loss's
formula (mu = 0.2, default hyper-parameters but DRPO's delta, fixed at 0.5 so that the hand values do not
follow the recommended default; r = pi / mu)."""

from __future__ import annotations

import math

import pytest
import torch

from drpo.losses import get_loss, weight_curve

MU = 0.2
SHIFTS = torch.tensor([-0.3, -0.16, -0.1, 0.0, 0.1, 0.3, 0.5], dtype=torch.float64)  # pi - mu
R = [None, 0.2, 0.5, 1.0, 1.5, 2.5, 3.5]  # pi / mu; pi = -0.1 is no probability: NaN, left out of the plot
NAN = math.nan
HYPER = {"drpo": {"delta": 0.5}, "drpo_clipped": {"delta": 0.5}}

# (loss, advantage): w at each shift
EXPECTED = {
    ("pg_is", 1): [NAN, 1, 1, 1, 1, 1, 1],
    ("ppo_clip", 1): [NAN, 1, 1, 1, 0, 0, 0],  # A > 0: dropped past r = 1 + 0.2
    ("ppo_clip", -1): [NAN, 0, 0, 1, 1, 1, 1],  # A < 0: dropped below r = 1 - 0.2
    ("cispo", 1): [NAN, 1, 1, 1, 1.28 / 1.5, 1.28 / 2.5, 1.28 / 3.5],  # clip(r, 0, 1.28) / r, whatever A's sign
    ("cispo", -1): [NAN, 1, 1, 1, 1.28 / 1.5, 1.28 / 2.5, 1.28 / 3.5],
    ("spo", 1): [NAN, 5.0, 3.5, 1, -1.5, -6.5, -11.5],  # 1 - (r - 1) / 0.2
    ("spo", -1): [NAN, -3.0, -1.5, 1, 3.5, 8.5, 13.5],  # 1 + (r - 1) / 0.2
    ("drpo", 1): [NAN, 1.32, 1.2, 1, 0.8, 0.4, 0.0],  # 1 - (pi - mu) / 0.5: zero on the boundary
    ("drpo", -1): [NAN, 0.68, 0.8, 1, 1.2, 1.6, 2.0],  # 1 + (pi - mu) / 0.5
    ("drpo_clipped", 1): [NAN, 1, 1, 1, 0.8, 0.4, 0.0],  # min(1, w_drpo)
    ("drpo_clipped", -1): [NAN, 0.68, 0.8, 1, 1, 1, 1],
    ("dppo_binary_tv", 1): [NAN, 1, 1, 1, 1, 0, 0],  # dropped past pi - mu > 0.15
    ("dppo_binary_tv", -1): [NAN, 0, 1, 1, 1, 1, 1],  # dropped past pi - mu < -0.15
    # binary KL(mu || pi) at pi = 0.04, 0.1, 0.3, 0.5, 0.7: 0.176, 0.044, 0.026, 0.193, 0.534; dropped past 0.05
    # when pi moved the way A pushes
    ("dppo_binary_kl", 1): [NAN, 1, 1, 1, 1, 0, 0],
    ("dppo_binary_kl", -1): [NAN, 0, 1, 1, 1, 1, 1],
}


@pytest.mark.parametrize("loss,advantage", list(EXPECTED), ids=lambda v: str(v))
def test_weight_curve_at_hand_computed_points(loss, advantage):
    w = weight_curve(get_loss(loss, **HYPER.get(loss, {})), MU, SHIFTS, float(advantage))
    expected = torch.tensor(EXPECTED[loss, advantage], dtype=torch.float64)
    torch.testing.assert_close(w, expected, atol=1e-9, rtol=1e-9, equal_nan=True)


def test_binary_kl_points_of_the_table():
    """The KL values quoted above, so the table's drops are the formula's."""
    def kl(pi):
        return MU * math.log(MU / pi) + (1 - MU) * math.log((1 - MU) / (1 - pi))

    assert [round(kl(pi), 3) for pi in (0.04, 0.1, 0.3, 0.5, 0.7)] == [0.176, 0.044, 0.026, 0.193, 0.534]
