"""The figures of a sweep's report, drawn from the runs (curves) and from results.json (summaries)."""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path

from drpo.lab.outcomes import LATE_WINDOW
from drpo.lab.runs import Run, seed_mean_curve


def fill_title(text: str, inches: float, points: float = 12) -> str:
    """``text`` wrapped to a title ``inches`` wide at ``points`` (DejaVu Sans averages under 0.6 em a character), so
    a long condition description is not cut at both edges of the figure (12 points: matplotlib's suptitle size)."""
    return textwrap.fill(text, width=int(inches * 72 / (0.6 * points)))


def plot_condition(path: Path, condition: str, about: str, runs_by_method: dict[str, list[Run]]) -> Path:
    """The DPPO sanity-test figure: reward, eval accuracy, mean abs(pi-mu), max/min of pi-mu against step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [("training reward", ["reward/mean"]), ("eval accuracy (greedy)", ["eval/accuracy"]),
              ("mean |pi - mu|", ["mismatch/abs_mean"]), ("max / min of pi - mu", ["mismatch/max", "mismatch/min"])]
    colors = _colors(len(runs_by_method))
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for color, (label, runs) in zip(colors, runs_by_method.items(), strict=True):
            for key, style in zip(keys, ("-", "--"), strict=False):
                curve = seed_mean_curve(runs, key)
                if not curve:
                    continue
                steps, mean, low, high = zip(*curve, strict=True)
                marker = "o" if key.startswith("eval/") else None
                ax.plot(steps, mean, style, color=color, marker=marker, ms=3, lw=1.5,
                        label=label if key == keys[0] else None)
                if len(runs) > 1:
                    ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
        if keys[0] == "mismatch/abs_mean" and ax.has_data():
            ax.set_yscale("log")
        if len(keys) == 2:
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_title(f"{title} (solid: max, dashed: min)")
        else:
            ax.set_title(title)
        ax.set_xlabel("step")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(fill_title(f"{condition}: {about}", 13) + "\n(mean over seeds, band: min..max over seeds)")
    return _save(fig, path)


def plot_trust_region(path: Path, condition: str, runs_by_method: dict[str, list[Run]]) -> Path:
    """Per method over training, how far the gradient weights depart from 1: tokens masked (w = 0), corrective
    (w < 0), amplified (w > 1), mean |w - 1|, the weight's max and min, and (diagnose_pull=true) the
    gradient-norm ratio of the pull part to the policy-gradient part."""
    import matplotlib.pyplot as plt

    panels = ((["loss/masked_frac"], "masked tokens (w = 0)"), (["loss/corrective_frac"], "corrective tokens (w < 0)"),
              (["loss/amplified_frac"], "amplified tokens (w > 1)"), (["loss/weight_dev"], "mean |w - 1|"),
              (["loss/weight_max", "loss/weight_min"], "max / min of w (solid: max, dashed: min)"),
              (["diagnose/pull_to_pg"], "|grad of pull part| / |grad of policy-gradient part|"))
    fig, axes = plt.subplots(2, 3, figsize=(18, 8))
    colors = _colors(len(runs_by_method))
    for ax, (keys, title) in zip(axes.flat, panels, strict=True):
        for color, (label, runs) in zip(colors, runs_by_method.items(), strict=True):
            for key, style in zip(keys, ("-", "--"), strict=False):
                curve = seed_mean_curve(runs, key)
                if curve:
                    steps, mean, low, high = zip(*curve, strict=True)
                    ax.plot(steps, mean, style, color=color, lw=1.5, label=label if key == keys[0] else None)
                    if len(runs) > 1:
                        ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
        if not ax.has_data():
            ax.text(0.5, 0.5, "not logged (diagnose_pull=true logs it)" if keys[0].startswith("diagnose/")
                    else "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title)
        ax.set_xlabel("step")
    labelled = next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), None)
    if labelled is not None:
        labelled.legend(fontsize=8)
    fig.suptitle(fill_title(f"{condition}: how far each method's gradient weights depart from 1", 18))
    return _save(fig, path)


def plot_outcome(path: Path, results: dict) -> Path:
    """Late accuracy (the primary outcome) per condition and method, in two panels on one x layout. Top: the mean
    over seeds, error bar its t interval (it holds the base models' spread too). Bottom: what the verdict reads,
    the paired difference to the baseline with its t interval; a filled marker where the separation survives
    Holm's correction for the family of comparisons against the baseline, hollow otherwise."""
    import matplotlib.pyplot as plt

    conditions = list(results["conditions"])
    labels = list(results["methods"])
    base = results.get("baseline")
    width = 0.8 / max(1, len(labels))
    level = round(100 * results["level"])
    fig_width = max(6, 1.6 * len(conditions) * max(1, len(labels)) / 3)
    fig, (bars, paired) = plt.subplots(2, 1, sharex=True, figsize=(fig_width, 7.5), height_ratios=(1, 1))
    # a one-condition figure is 6 inches wide: wrap the titles to fit it
    wrap = functools.partial(fill_title, inches=fig_width, points=9)
    top = 0.05
    for i, (color, label) in enumerate(zip(_colors(len(labels)), labels, strict=True)):
        xs, means, errors = [], [], [[], []]
        for j, condition in enumerate(conditions):
            m = results["conditions"][condition]["methods"][label]
            interval = m["late_interval"]
            if interval["mean"] is None:
                continue
            x = j + (i - (len(labels) - 1) / 2) * width
            xs.append(x)
            means.append(interval["mean"])
            low, high = (interval["low"], interval["high"]) if interval["low"] is not None else (interval["mean"],) * 2
            errors[0].append(interval["mean"] - max(0.0, low))
            errors[1].append(min(1.0, high) - interval["mean"])
            top = max(top, min(1.0, high))
            d = m.get("vs_baseline")
            if d is not None and d["mean"] is not None:
                kept = d.get("p_holm") is not None and d["p_holm"] < 1 - results["level"]
                paired.errorbar([x], [d["mean"]], yerr=_error_bars([d]), fmt="o", color=color, capsize=2,
                                markerfacecolor=color if kept else "white")
        bars.bar(xs, means, width, yerr=errors, color=color, label=label, capsize=2)
    bars.set_ylim(0, 1.15 * top)
    bars.set_ylabel(f"late accuracy (last {round(100 * LATE_WINDOW)}% of steps)")
    bars.legend(fontsize=7, ncol=3)
    bars.set_title(wrap(f"late eval accuracy: mean over the last {round(100 * LATE_WINDOW)}% of steps (mean over "
                        f"seeds, error bar: {level}% t interval)"), fontsize=9)
    paired.axhline(0.0, color="black", linewidth=0.8)
    paired.set_xticks(range(len(conditions)), conditions)
    paired.set_ylabel(f"method - {base}, paired over seeds")
    paired.set_title(wrap(f"what the verdict reads: late accuracy minus {base}'s on the same seeds ({level}% t "
                          "interval; filled: separated after Holm's correction)"), fontsize=9)
    return _save(fig, path)


def plot_hyper_sweep(path: Path, results: dict, condition: str) -> Path:
    """One condition, every swept loss hyper-parameter (results['sweeps']): late accuracy (the primary outcome;
    mean, t interval), steps to target ('never' drawn above the last step), collapsed seeds, and the paired
    difference of late
    accuracy to the baseline (the interval that decides; the unpaired one also holds the base models' spread),
    the pull part's gradient-norm share (diagnose_pull=true) and the shares of amplified and corrective
    tokens, against the value (log scale)."""
    import matplotlib.pyplot as plt

    cond = results["conditions"][condition]
    fig, grid = plt.subplots(2, 3, figsize=(18, 9))
    axes = list(grid.flat)
    last_step = max((n["last_step"] for m in cond["methods"].values() for n in m["per_seed"].values()), default=1)
    sweeps = results["sweeps"]
    for i, (color, sweep) in enumerate(zip(_colors(len(sweeps)), sweeps, strict=True)):
        label = f"{sweep['loss']} ({sweep['parameter']})"
        points = [(p["value"], cond["methods"][p["label"]]) for p in sweep["points"] if cond["methods"][p["label"]]["seeds"]]
        if not points:
            continue
        nudge = 1.06 ** (i - (len(sweeps) - 1) / 2)  # losses sharing a value stay apart on the log axis
        xs = [x * nudge for x, _ in points]
        lates = [m["late_interval"] for _, m in points]
        axes[0].errorbar(xs, [f["mean"] for f in lates], yerr=_error_bars(lates), color=color, marker="o", capsize=3,
                         label=label)
        steps = [m["steps_to_target"] for _, m in points]
        axes[1].plot(xs, [s if s is not None else math.nan for s in steps], color=color, marker="o", label=label)
        never = [x for x, s in zip(xs, steps, strict=True) if s is None]
        axes[1].scatter(never, [1.1 * last_step] * len(never), color=color, marker="x", s=60)
        axes[2].plot(xs, [m["collapsed"] / m["seeds"] for _, m in points], color=color, marker="o", label=label)
        paired = [(x, m["vs_baseline"] or _ZERO) for x, (_, m) in zip(xs, points, strict=True)
                  if m["vs_baseline"] is None or m["vs_baseline"]["mean"] is not None]
        axes[3].errorbar([x for x, _ in paired], [d["mean"] for _, d in paired],
                         yerr=_error_bars([d for _, d in paired]), color=color, marker="o", capsize=3, label=label)
        axes[4].plot(xs, [_mean_or_nan(m["pull_to_pg"]) for _, m in points], color=color, marker="o", label=label)
        for key, style in (("amplified_frac", "-"), ("corrective_frac", "--")):
            axes[5].plot(xs, [100 * _mean_or_nan(m[key]) for _, m in points], style, color=color, marker="o",
                         label=label if style == "-" else None)
    titles = (f"late eval accuracy (last {round(100 * LATE_WINDOW)}% of steps; mean, "
              f"{round(100 * results['level'])}% t interval)",
              f"steps to target {cond['target']:.3f}" + " (x: never)" if cond["target"] is not None else "steps to target",
              "collapsed seeds (fraction)",
              f"late - {results['baseline']}, paired over seeds ({round(100 * results['level'])}% t)",
              "pull / pg: gradient norm of the (w - 1) part over the w = 1 part",
              "tokens with w > 1 (solid) and w < 0 (dashed), % (mean over steps)")
    values = sorted({p["value"] for sweep in sweeps for p in sweep["points"]})
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("boundary (delta)")
        ax.set_title(title)
    axes[1].set_ylim(0, 1.2 * last_step)
    axes[2].set_ylim(-0.05, 1.05)
    axes[3].axhline(0, color="grey", lw=0.8)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(fill_title(f"{condition}: trust-region width swept (each point: its seeds)", fig.get_figwidth()))
    return _save(fig, path)


_ZERO = {"mean": 0.0, "low": None, "high": None}  # the baseline against itself


def _mean_or_nan(stat: dict) -> float:
    """A {'mean', ...} statistic as a plotted value: NaN (a gap) where no run logged it."""
    return stat["mean"] if stat["mean"] is not None else math.nan


def _error_bars(intervals: list[dict]) -> list[list[float]]:
    """matplotlib's [below, above] from {'mean', 'low', 'high'} intervals (no bar where there is no interval)."""
    return [[i["mean"] - (i["low"] if i["low"] is not None else i["mean"]) for i in intervals],
            [(i["high"] if i["high"] is not None else i["mean"]) - i["mean"] for i in intervals]]


def weight_figure_losses(methods: dict) -> tuple[list[str], list[str]]:
    """Registry or preset names that reproduce the sweep's methods (plot_weight_curves takes bare names),
    and the labels it cannot draw (custom hyper-parameters, top-k losses that need logits, or trainer settings that
    move the boundary while it trains)."""
    from drpo.losses import LOSSES, PRESETS, get_loss

    names, skipped = [], []
    for label, method in methods.items():
        loss = get_loss(method["loss"], **method["hyper"])
        candidates = [method["loss"], loss.name, *(p for p, (base, _) in PRESETS.items() if base == loss.name)]
        match = next((c for c in candidates if get_loss(c).hyper == loss.hyper), None)
        if match is None or LOSSES[loss.name].needs_topk or method.get("trainer"):
            skipped.append(label)
        elif match not in names:
            names.append(match)
    return names, skipped


def _colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    from drpo.plots import save_figure

    fig.tight_layout()
    # 80 dpi: the multi-panel figures stay legible at 1440 px wide, at about half the bytes of 110 dpi (every
    # clone of the repository carries every published report's figures)
    return save_figure(fig, path, dpi=80)
