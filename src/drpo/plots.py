"""Figures a person would rather look at than read: gradient weights and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from drpo.losses import get_loss, weight_curve  # noqa: E402

WEIGHT_FIGURE_LOSSES = ("ppo_clip", "spo", "dppo_binary_tv", "drpo")


def plot_weight_curves(path: str | Path, losses: Sequence[str] = WEIGHT_FIGURE_LOSSES,
                       mus: Sequence[float] = (0.9, 0.3, 0.01)) -> Path:
    """w_t against pi - mu, one panel per (mu, sign of A), one line per loss (default hyper-parameters).

    The picture of PAPER.md's table: PPO and DPPO cut to 0, SPO's ratio-based weight dives for rare
    tokens, DRPO falls linearly to 0 at the Binary-TV boundary and turns corrective past it.
    """
    path = Path(path)
    fig, axes = plt.subplots(2, len(mus), figsize=(4.2 * len(mus), 7), sharey=True, squeeze=False)
    for col, mu in enumerate(mus):
        shifts = torch.linspace(-min(mu, 0.5), min(1 - mu, 0.5), 801, dtype=torch.float64)
        for row, advantage in enumerate((1.0, -1.0)):
            ax = axes[row][col]
            for name in losses:
                loss = get_loss(name)
                ax.plot(shifts.numpy(), weight_curve(loss, mu, shifts, advantage).numpy(), label=_label(loss), lw=1.8)
            ax.axhline(0, color="grey", lw=0.6)
            ax.axvline(0, color="grey", lw=0.6, ls=":")
            ax.set_ylim(-1.6, 2.2)
            ax.set_title(f"mu = {mu}, A {'> 0' if advantage > 0 else '< 0'}")
            ax.set_xlabel("pi - mu")
            if col == 0:
                ax.set_ylabel("gradient weight w")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Gradient weight w_t: grad = E[w * r * A * grad log pi]")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(loss) -> str:
    hyper = {k: v for k, v in loss.hyper.model_dump().items() if k != "anchor" and v is not None}
    return f"{loss.name} ({', '.join(f'{k}={v}' for k, v in hyper.items())})"
