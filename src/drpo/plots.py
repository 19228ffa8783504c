"""Figures a person would rather look at than read: gradient weights and training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from drpo.losses import get_loss, weight_curve  # noqa: E402

WEIGHT_FIGURE_LOSSES = ("ppo_clip", "spo", "dppo_binary_tv", "drpo")


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a 256-colour PNG and close it. Line plots need no more colours, and the published figures
    take a third of the bytes of matplotlib's RGBA files (every clone of the repository carries them); the
    quantization is deterministic, so a rebuilt report's figures are byte-identical."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(256).save(path, format="PNG", optimize=True)
    return path


def plot_weight_curves(path: str | Path, losses: Sequence[str] = WEIGHT_FIGURE_LOSSES,
                       mus: Sequence[float] = (0.9, 0.3, 0.01)) -> Path:
    """w_t against pi - mu, one panel per (mu, sign of A), one line per loss (default hyper-parameters).

    The picture of docs/method.md's table of weights: PPO and DPPO cut to 0, SPO's ratio-based weight dives for rare
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
    return save_figure(fig, path, dpi=120)


def _label(loss) -> str:
    hyper = {k: v for k, v in loss.hyper.model_dump().items() if k != "anchor" and v is not None}
    return f"{loss.name} ({', '.join(f'{k}={v}' for k, v in hyper.items())})"


RUN_PANELS = (
    ("reward", ["reward/mean"]),
    ("eval accuracy", ["eval/accuracy", "eval/sampled_accuracy"]),
    ("mismatch mean |pi - mu|", ["mismatch/abs_mean"]),
    ("mismatch max / min of pi - mu", ["mismatch/max", "mismatch/min"]),
    ("tokens past the trust region", ["loss/masked_frac", "loss/corrective_frac"]),
    ("gradient weight mean", ["loss/weight_mean"]),
    ("entropy", ["entropy"]),
    ("response length", ["response_length/mean"]),
    ("grad norm", ["grad_norm"]),
)


def plot_run(run_dir: str | Path, records: list[dict]) -> Path:
    """plots/curves.png: the main curves of one run against step."""
    run_dir = Path(run_dir)
    fig, axes = plt.subplots(3, 3, figsize=(14, 10))
    for ax, (title, keys) in zip(axes.flat, RUN_PANELS, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=key, marker="o" if key.startswith("eval/") else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    return save_figure(fig, run_dir / "plots" / "curves.png", dpi=100)
