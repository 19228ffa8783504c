"""The report of a sweep: report.md, figures/*.png and results.json, from the runs' files only.

    drpo report runs/compare            # rebuild from the run directories (e.g. after tuning --target)

Inputs: SWEEP_DIR/sweep.yaml (the grid compare resolved) and, per run, metrics.jsonl and summary.json
under SWEEP_DIR/runs/{condition}/{method}/seed{k}/. Nothing here imports the trainer: a report can be
rebuilt anywhere the files are. Only finished runs count (summary.json present, not interrupted);
the report lists the others as missing.

Numbers (all per condition x method, mean +- sample std over seeds):
    start / best / final   eval accuracy at step 0, its maximum, and at the last evaluation
    steps to target        first eval step at which the seed-mean accuracy reaches the target (steps all
                           seeds logged; default target: the condition's mean start accuracy + 0.15)
    collapsed              seeds collapsed by drpo.experiments.collapse.detect_collapse
    peak mismatch          max over steps of mismatch/abs_mean (mean abs(pi - mu) at rollout time)
    masked / corrective    mean over steps of loss/masked_frac (w = 0) and loss/corrective_frac (w < 0)
    time                   rollout + update seconds summed over steps (evaluation excluded; exact for
                           resumed runs, whose summary.json wall time covers the last segment only)
The verdict is generated from these numbers by :func:`verdict`; nothing in it is written by hand.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from drpo.experiments.collapse import __doc__ as COLLAPSE_DOC
from drpo.experiments.collapse import as_number, detect_collapse

TARGET_MARGIN = 0.15  # default target: start accuracy + this
TIE = 5e-4  # differences below half the table's last digit are ties


@dataclass
class Run:
    condition: str
    method: str  # label
    seed: int
    path: Path
    records: list[dict]
    summary: dict


# ----------------------------------------------------------------------------- reading
def load_grid(sweep_dir: str | Path) -> dict:
    path = Path(sweep_dir) / "sweep.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {sweep_dir} a `drpo compare` sweep directory?")
    return yaml.safe_load(path.read_text())


def run_dir(sweep_dir: str | Path, condition: str, slug: str, seed: int) -> Path:
    return Path(sweep_dir) / "runs" / condition / slug / f"seed{seed}"


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(sweep_dir: str | Path, grid: dict) -> tuple[list[Run], list[str]]:
    """Finished runs of the grid, and the 'condition/method/seedK' names of the missing or unfinished ones."""
    runs, missing = [], []
    for condition in grid["conditions"]:
        for label, method in grid["methods"].items():
            for seed in grid["seeds"]:
                path = run_dir(sweep_dir, condition, method["slug"], seed)
                summary_path = path / "summary.json"
                summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
                if summary is None or summary.get("interrupted") or not (path / "metrics.jsonl").is_file():
                    missing.append(f"{condition}/{label}/seed{seed}")
                    continue
                runs.append(Run(condition, label, seed, path, read_records(path / "metrics.jsonl"), summary))
    return runs, missing


# ----------------------------------------------------------------------------- numbers
def mean_std(values: list[float]) -> dict:
    """{'mean', 'std', 'n'}: sample standard deviation (0 for one value); None mean when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), v) for r in records if (v := as_number(r.get(key))) is not None]


def run_numbers(run: Run) -> dict:
    evals = [v for _, v in series(run.records, "eval/accuracy")]
    mismatch = [v for _, v in series(run.records, "mismatch/abs_mean")]
    times = [as_number(r.get("time/rollout_s", 0)) + as_number(r.get("time/update_s", 0))
             for r in run.records if "time/rollout_s" in r]
    collapse = detect_collapse(run.records, stopped=run.summary.get("stopped"))
    return {
        "start": evals[0] if evals else None,
        "best": max(evals) if evals else None,
        "final": evals[-1] if evals else None,
        "peak_mismatch": max(mismatch) if mismatch else None,
        "masked_frac": _mean([v for _, v in series(run.records, "loss/masked_frac")]),
        "corrective_frac": _mean([v for _, v in series(run.records, "loss/corrective_frac")]),
        "time_s": sum(times),
        "last_step": max((int(r["step"]) for r in run.records), default=0),
        "collapse": {"collapsed": collapse.collapsed, "step": collapse.step, "reason": collapse.reason},
    }


def seed_mean_curve(runs: list[Run], key: str, common: bool = False) -> list[tuple[int, float, float, float]]:
    """(step, mean, min, max) over the seeds that logged ``key`` at that step (``common``: all seeds did)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in series(run.records, key):
            by_step.setdefault(step, []).append(value)
    return [(step, statistics.fmean(v), min(v), max(v)) for step, v in sorted(by_step.items())
            if not common or len(v) == len(runs)]


def steps_to_target(runs: list[Run], target: float) -> int | None:
    """First eval step at which the seed-mean eval accuracy (steps all seeds logged) reaches ``target``."""
    return next((step for step, mean, _, _ in seed_mean_curve(runs, "eval/accuracy", common=True)
                 if mean >= target - 1e-12), None)


def summarize(grid: dict, runs: list[Run], target: float | None = None) -> dict:
    """results.json: per condition and method, the table's numbers (and each seed's) plus the verdict."""
    target = grid.get("target") if target is None else target
    results = {"methods": grid["methods"], "seeds": grid["seeds"], "overrides": grid.get("overrides", []),
               "target_given": target, "target_rule": _target_rule(target), "conditions": {}}
    for condition, spec in grid["conditions"].items():
        crun = [r for r in runs if r.condition == condition]
        starts = [n["start"] for n in (run_numbers(r) for r in crun) if n["start"] is not None]
        cond_target = target if target is not None else (
            statistics.fmean(starts) + TARGET_MARGIN if starts else None)
        methods = {}
        for label in grid["methods"]:
            mruns = sorted((r for r in crun if r.method == label), key=lambda r: r.seed)
            per_seed = {r.seed: run_numbers(r) for r in mruns}
            entry = {key: mean_std([n[key] for n in per_seed.values()])
                     for key in ("start", "best", "final", "peak_mismatch", "masked_frac", "corrective_frac", "time_s")}
            entry["seeds"] = len(mruns)
            entry["collapsed"] = sum(n["collapse"]["collapsed"] for n in per_seed.values())
            entry["steps_to_target"] = (steps_to_target(mruns, cond_target)
                                        if mruns and cond_target is not None else None)
            entry["per_seed"] = per_seed
            methods[label] = entry
        weak = sorted({r.seed for r in crun if (r.summary.get("base_model") or {}).get("missed_target")})
        results["conditions"][condition] = {"about": spec["about"], "overrides": spec["overrides"],
                                            "target": cond_target, "methods": methods, "weak_base_seeds": weak}
    results["verdict"] = verdict(results)
    return results


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _target_rule(target: float | None) -> str:
    if target is None:
        return f"each condition's mean start accuracy + {TARGET_MARGIN}"
    return f"fixed eval accuracy {target:.3f} (--target)"


# ----------------------------------------------------------------------------- verdict
def verdict(results: dict) -> dict:
    """Sentences generated from the numbers: {'conditions': {name: [sentences]}, 'overall': [sentences]}.

    Rules: a method wins a condition with the highest seed-mean final eval accuracy (ties: within TIE);
    a difference between two methods is *beyond the seed spread* when both have >= 2 seeds and
    abs(difference) > std_a + std_b, *within* it otherwise; with one seed the spread is unknown.
    Every method on the headline loss (drpo, any delta) is compared with every other method. A condition
    with a run whose base model missed its warm-up target is not judged (one sentence says why).
    """
    headline = [label for label, m in results["methods"].items() if m.get("canonical") == "drpo"]
    out = {"conditions": {}, "overall": []}
    winners_by_condition = {}
    for condition, cond in results["conditions"].items():
        methods = {label: m for label, m in cond["methods"].items() if m["seeds"] > 0 and m["final"]["mean"] is not None}
        sentences = []
        if not methods:
            out["conditions"][condition] = [f"{condition}: no finished runs."]
            continue
        if cond.get("weak_base_seeds"):  # the runs had little or no reward signal: a ranking would rank noise
            seeds = ", ".join(str(s) for s in cond["weak_base_seeds"])
            out["conditions"][condition] = [
                f"{condition}: not judged. The base model of seed {seeds} missed its warm-up target "
                "(summary.json: base_model.missed_target), so RL from it had little or no reward signal and the "
                "highest final accuracy would rank noise; raise warmup.steps or use an easier task."]
            continue
        best = max(m["final"]["mean"] for m in methods.values())
        winners = [label for label, m in methods.items() if best - m["final"]["mean"] < TIE]
        winners_by_condition[condition] = winners
        seeds = sorted({m["seeds"] for m in methods.values()})
        seed_text = f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1 else "varying seeds"
        if len(winners) == 1:
            m = methods[winners[0]]
            sentences.append(f"{condition}: the highest final eval accuracy is {winners[0]}'s, "
                             f"{_pm(m['final'])} ({seed_text}).")
        else:
            sentences.append(f"{condition}: the highest final eval accuracy, {best:.3f}, is shared by "
                             f"{_join(winners)} ({seed_text}).")
        collapsed = [f"{label} ({m['collapsed']}/{m['seeds']} seeds)" for label, m in methods.items() if m["collapsed"]]
        sentences.append(f"Collapsed: {_join(collapsed)}." if collapsed else "No method collapsed.")
        target = cond["target"]
        if target is not None:
            reached = sorted(((m["steps_to_target"], label) for label, m in methods.items()
                              if m["steps_to_target"] is not None))
            never = [label for label, m in methods.items() if m["steps_to_target"] is None]
            if reached:
                first = [label for step, label in reached if step == reached[0][0]]
                text = (f"First to reach the target accuracy {target:.3f}: {_join(first)} at step {reached[0][0]}"
                        + (f"; never reached by {_join(never)}." if never else "; every method reached it."))
            else:
                text = f"No method reached the target accuracy {target:.3f}."
            sentences.append(text)
        for label in headline:
            if label in methods:
                sentences.append(_headline_sentence(label, methods))
        out["conditions"][condition] = sentences
    for label in headline:
        out["overall"].extend(_overall_sentences(label, results, winners_by_condition))
    return out


def compare_pair(a: dict, b: dict) -> tuple[float, str]:
    """(final-accuracy difference a - b, 'beyond the seed spread' | 'within the seed spread' | 'spread unknown')."""
    diff = a["final"]["mean"] - b["final"]["mean"]
    if a["seeds"] < 2 or b["seeds"] < 2:
        return diff, "one seed, spread unknown"
    spread = a["final"]["std"] + b["final"]["std"]
    return diff, "beyond the seed spread" if abs(diff) > spread else "within the seed spread"


def _headline_sentence(label: str, methods: dict) -> str:
    wins, losses, ties = [], [], []
    for other, m in methods.items():
        if other == label:
            continue
        diff, spread = compare_pair(methods[label], m)
        if abs(diff) < TIE:
            ties.append(other)
        elif diff > 0:
            wins.append(f"{other} by {diff:.3f} ({spread})")
        else:
            losses.append(f"{other} by {-diff:.3f} ({spread})")
    parts = []
    if wins:
        parts.append(f"beat {_join(wins)}")
    if losses:
        parts.append(f"lost to {_join(losses)}")
    if ties:
        parts.append(f"tied with {_join(ties)}")
    return f"On final accuracy {label} " + "; ".join(parts) + "." if parts else f"{label} was the only method."


def _overall_sentences(label: str, results: dict, winners_by_condition: dict) -> list[str]:
    won, lost, collapsed = [], [], []
    for condition, cond in results["conditions"].items():
        m = cond["methods"].get(label)
        if condition not in winners_by_condition or not m or m["seeds"] == 0 or m["final"]["mean"] is None:
            continue
        if label in winners_by_condition[condition]:
            won.append(condition)
        else:
            best = winners_by_condition[condition]
            gap = cond["methods"][best[0]]["final"]["mean"] - m["final"]["mean"]
            lost.append(f"{condition} (best: {_join(best)}, {gap:.3f} ahead)")
        if m["collapsed"]:
            collapsed.append(f"{condition} ({m['collapsed']}/{m['seeds']} seeds)")
    total = len(won) + len(lost)
    if total == 0:
        return []
    sentences = [f"{label} had the highest final accuracy in {len(won)} of {total} condition{'s' if total > 1 else ''}"
                 + (f" ({_join(won)})" if won else "") + "."]
    if lost:
        sentences.append(f"It did not win {_join(lost)}.")
    sentences.append(f"{label} collapsed in {_join(collapsed)}." if collapsed else f"{label} never collapsed.")
    return sentences


def _join(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _pm(stat: dict, fmt: str = ".3f") -> str:
    if stat["mean"] is None:
        return "-"
    if stat["n"] < 2:
        return f"{stat['mean']:{fmt}}"
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}"


# ----------------------------------------------------------------------------- figures
def plot_condition(path: Path, condition: str, about: str, runs_by_method: dict[str, list[Run]]) -> Path:
    """The DPPO sanity-test figure: reward, eval accuracy, mean abs(pi-mu), max/min of pi-mu against step."""
    import matplotlib

    matplotlib.use("Agg")
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
    fig.suptitle(f"{condition}: {about}\n(mean over seeds, band: min..max over seeds)")
    return _save(fig, path)


def plot_trust_region(path: Path, condition: str, runs_by_method: dict[str, list[Run]]) -> Path:
    """Fraction of masked (w = 0) and corrective (w < 0) tokens over training, per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = _colors(len(runs_by_method))
    for ax, key, title in zip(axes, ("loss/masked_frac", "loss/corrective_frac"),
                              ("masked tokens (w = 0)", "corrective tokens (w < 0)"), strict=True):
        for color, (label, runs) in zip(colors, runs_by_method.items(), strict=True):
            curve = seed_mean_curve(runs, key)
            if curve:
                steps, mean, low, high = zip(*curve, strict=True)
                ax.plot(steps, mean, color=color, lw=1.5, label=label)
                if len(runs) > 1:
                    ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("fraction of response tokens")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{condition}: tokens past the trust region")
    return _save(fig, path)


def plot_final_accuracy(path: Path, results: dict) -> Path:
    """Grouped bars: final eval accuracy per condition and method, error bars = std over seeds."""
    import matplotlib.pyplot as plt

    conditions = list(results["conditions"])
    labels = list(results["methods"])
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(conditions) * max(1, len(labels)) / 3), 4.5))
    for i, (color, label) in enumerate(zip(_colors(len(labels)), labels, strict=True)):
        xs, means, stds = [], [], []
        for j, condition in enumerate(conditions):
            final = results["conditions"][condition]["methods"][label]["final"]
            if final["mean"] is not None:
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                means.append(final["mean"])
                stds.append(final["std"])
        ax.bar(xs, means, width, yerr=stds, color=color, label=label, capsize=2)
    ax.set_ylim(0, 1.15 * max([0.05] + [m["final"]["mean"] + m["final"]["std"] for c in results["conditions"].values()
                                         for m in c["methods"].values() if m["final"]["mean"] is not None]))
    ax.set_xticks(range(len(conditions)), conditions)
    ax.set_ylabel("final eval accuracy")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("final eval accuracy (mean over seeds, error bar: std)")
    return _save(fig, path)


def weight_figure_losses(methods: dict) -> tuple[list[str], list[str]]:
    """Registry or preset names that reproduce the sweep's methods (plot_weight_curves takes bare names),
    and the labels it cannot draw (custom hyper-parameters, or top-k losses that need logits)."""
    from drpo.losses import LOSSES, PRESETS, get_loss

    names, skipped = [], []
    for label, method in methods.items():
        loss = get_loss(method["loss"], **method["hyper"])
        candidates = [method["loss"], loss.name, *(p for p, (base, _) in PRESETS.items() if base == loss.name)]
        match = next((c for c in candidates if get_loss(c).hyper == loss.hyper), None)
        if match is None or LOSSES[loss.name].needs_topk:
            skipped.append(label)
        elif match not in names:
            names.append(match)
    return names, skipped


def _colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report.md
def write_report(sweep_dir: str | Path, target: float | None = None) -> Path:
    """Read the sweep's run files, write results.json, figures/*.png and report.md; returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    from drpo.plots import plot_weight_curves

    sweep_dir = Path(sweep_dir)
    grid = load_grid(sweep_dir)
    runs, missing = load_runs(sweep_dir, grid)
    results = summarize(grid, runs, target)
    results["missing"] = missing
    figures = sweep_dir / "figures"
    for condition, cond in results["conditions"].items():
        by_method = {label: [r for r in runs if r.condition == condition and r.method == label]
                     for label in grid["methods"]}
        by_method = {label: rs for label, rs in by_method.items() if rs}
        plot_condition(figures / f"{condition}_curves.png", condition, cond["about"], by_method)
        plot_trust_region(figures / f"{condition}_trust_region.png", condition, by_method)
    plot_final_accuracy(figures / "final_accuracy.png", results)
    drawn, not_drawn = weight_figure_losses(grid["methods"])
    if drawn:
        plot_weight_curves(figures / "weights.png", losses=drawn)
    (sweep_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    path = sweep_dir / "report.md"
    path.write_text(render_markdown(sweep_dir, results, drawn, not_drawn))
    return path


def render_markdown(sweep_dir: Path, results: dict, drawn: list[str], not_drawn: list[str]) -> str:
    methods, conditions = results["methods"], results["conditions"]
    seeds = results["seeds"]
    lines = [f"# Off-policy stress test: {sweep_dir.name}", "",
             f"{_count(len(methods), 'method')} x {_count(len(seeds), 'seed')} x "
             f"{_count(len(conditions), 'condition')}, the same base model, prompts and seeds for every "
             f"method. Overrides applied to every run: {_code(' '.join(results['overrides'])) or 'none'}.", ""]
    if results.get("missing"):
        lines += [f"**Missing or unfinished runs ({len(results['missing'])})**, left out of every number below: "
                  + ", ".join(results["missing"]), ""]
    lines += ["## Verdict", "", "Generated from the numbers in results.json (drpo.experiments.report.verdict): "
              "a difference is *beyond the seed spread* when both methods have at least 2 seeds and it exceeds "
              "the sum of their standard deviations; differences below 0.0005 are ties.", ""]
    for condition in conditions:
        lines += [" ".join(results["verdict"]["conditions"].get(condition, [])), ""]
    if results["verdict"]["overall"]:
        lines += ["**Overall.** " + " ".join(results["verdict"]["overall"]), ""]
    lines += ["![final accuracy](figures/final_accuracy.png)", "", "## Methods", "",
              "| method | loss | hyper-parameters |", "|---|---|---|"]
    for label, m in methods.items():
        hyper = ", ".join(f"{k}={v}" for k, v in m["hyper"].items()) or "defaults"
        lines.append(f"| {label} | {m['loss']} | {hyper} |")
    lines += ["", "## Conditions", "", "| condition | overrides | what it does |", "|---|---|---|"]
    for condition, cond in conditions.items():
        lines.append(f"| {condition} | {_code(' '.join(cond['overrides'])) or '(none)'} | {cond['about']} |")
    lines += ["", f"Target accuracy for *steps to target*: {results['target_rule']}.", "", COLUMNS, ""]
    for condition, cond in conditions.items():
        lines += condition_section(condition, cond)
    lines += ["## Gradient weights", ""]
    if drawn:
        lines += [f"w_t against pi - mu for {', '.join(drawn)} (drpo.plots.plot_weight_curves).", "",
                  "![gradient weights](figures/weights.png)", ""]
    if not_drawn:
        lines += [f"Not drawn (custom hyper-parameters or top-k losses): {', '.join(not_drawn)}.", ""]
    lines += ["## Collapse definition", "", "From drpo.experiments.collapse:", "", COLLAPSE_DOC.strip(), ""]
    return "\n".join(lines)


COLUMNS = """Columns of the tables (mean ± sample std over seeds; no std with one seed):
*start / best / final*: greedy eval accuracy at step 0, its maximum, at the last evaluation;
*steps to target*: first eval step at which the seed-mean accuracy reaches the target (steps all seeds logged);
*collapsed*: seeds collapsed (definition at the end); *peak mean abs(pi-mu)*: the largest per-step mean
abs(pi - mu) of the sampled tokens at rollout time; *masked % / corrective %*: tokens with gradient weight
w = 0 / w < 0, averaged over steps; *time (s)*: rollout + update seconds summed over steps (evaluation
excluded; parallel workers share the machine, so compare times within one sweep only)."""

TABLE_HEADER = ("| method | seeds | start | best | final | steps to target | collapsed | peak mean abs(pi-mu) "
                "| masked % | corrective % | time (s) |")


def condition_section(condition: str, cond: dict) -> list[str]:
    target = cond["target"]
    lines = [f"## {condition}", "", f"{cond['about']}. Overrides: {_code(' '.join(cond['overrides'])) or '(none)'}. "
             f"Target accuracy: {'-' if target is None else f'{target:.3f}'}.", "",
             f"![{condition} curves](figures/{condition}_curves.png)", "",
             TABLE_HEADER, _rule(TABLE_HEADER)]
    notes = []
    for label, m in cond["methods"].items():
        if m["seeds"] == 0:
            lines.append(f"| {label} | 0 | - | - | - | - | - | - | - | - | - |")
            continue
        steps = m["steps_to_target"]
        collapsed = f"{m['collapsed']}/{m['seeds']}" if m["collapsed"] else "no"
        lines.append(f"| {label} | {m['seeds']} | {_pm(m['start'])} | {_pm(m['best'])} | {_pm(m['final'])} "
                     f"| {'never' if steps is None else steps} | {collapsed} | {_pm(m['peak_mismatch'], '.2e')} "
                     f"| {_pct(m['masked_frac'])} | {_pct(m['corrective_frac'])} | {_pm(m['time_s'], '.1f')} |")
        for seed, numbers in m["per_seed"].items():
            if numbers["collapse"]["collapsed"]:
                notes.append(f"- {label}, seed {seed}: {numbers['collapse']['reason']}.")
    lines.append("")
    if notes:
        lines += ["Collapses:", "", *notes, ""]
    lines += [f"![{condition} trust region](figures/{condition}_trust_region.png)", ""]
    return lines


def parse_table(markdown: str, condition: str) -> dict[str, dict[str, str]]:
    """The table of one condition in report.md -> {method: {column: cell}} (for tests and scripts)."""
    section = markdown.split(f"\n## {condition}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _pct(stat: dict) -> str:
    return "-" if stat["mean"] is None else f"{100 * stat['mean']:.2f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _code(text: str) -> str:
    return f"`{text}`" if text else ""
