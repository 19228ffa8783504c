"""The report of a sweep: report.md, figures/*.png and results.json, from the runs' files only.

    drpo report runs/compare            # rebuild from the run directories (e.g. after tuning --target)

Inputs: SWEEP_DIR/sweep.yaml (the grid compare resolved) and, per run, metrics.jsonl, summary.json and
config.yaml under SWEEP_DIR/runs/{condition}/{method}/seed{k}/ (drpo.lab.runs). Nothing here
imports the trainer: a report can be rebuilt anywhere the files are. Only finished runs count
(summary.json present, not interrupted); the report lists the others as missing.

    runs.py      reading the sweep's files
    outcomes.py  the three outcomes: late accuracy (primary), area under the accuracy curve, collapse
    results.py   the numbers (results.json): per run, per condition x method, per swept hyper-parameter
    stats.py     paired differences over seeds and their t intervals
    verdict.py   the sentences generated from the numbers
    figures.py   the figures
    report.py    this file: report.md, and the write_report entry point
"""

from __future__ import annotations

import json
from pathlib import Path

from drpo.lab.collapse import __doc__ as COLLAPSE_DOC
from drpo.lab.figures import (
    plot_condition,
    plot_hyper_sweep,
    plot_outcome,
    plot_trust_region,
    weight_figure_losses,
)
from drpo.lab.outcomes import LATE_WINDOW
from drpo.lab.outcomes import __doc__ as OUTCOMES_DOC
from drpo.lab.results import summarize
from drpo.lab.runs import load_grid, load_runs
from drpo.lab.stats import __doc__ as STATS_DOC
from drpo.lab.verdict import format_difference, plus_minus


def write_report(sweep_dir: str | Path, target: float | None = None, baseline: str | None = None) -> Path:
    """Read the sweep's run files, write results.json, figures/*.png and report.md; returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    from drpo.plots import plot_weight_curves

    sweep_dir = Path(sweep_dir)
    grid = load_grid(sweep_dir)
    runs, missing = load_runs(sweep_dir, grid)
    results = summarize(grid, runs, target, baseline)
    results["missing"] = missing
    figures = sweep_dir / "figures"
    for condition, cond in results["conditions"].items():
        by_method = {label: [r for r in runs if r.condition == condition and r.method == label]
                     for label in grid["methods"]}
        by_method = {label: rs for label, rs in by_method.items() if rs}
        plot_condition(figures / f"{condition}_curves.png", condition, cond["about"], by_method)
        plot_trust_region(figures / f"{condition}_trust_region.png", condition, by_method)
        if results["sweeps"]:
            plot_hyper_sweep(figures / f"{condition}_sweep.png", results, condition)
    plot_outcome(figures / "late_accuracy.png", results)
    drawn, not_drawn = weight_figure_losses(grid["methods"])
    if drawn:
        plot_weight_curves(figures / "weights.png", losses=drawn)
    (sweep_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    path = sweep_dir / "report.md"
    path.write_text(render_markdown(sweep_dir, results, drawn, not_drawn))
    return path


def render_markdown(sweep_dir: Path, results: dict, drawn: list[str], not_drawn: list[str]) -> str:
    methods, conditions = results["methods"], results["conditions"]
    level = round(100 * results["level"])
    lines = [f"# Off-policy stress test: {sweep_dir.name}", "",
             f"{_count(len(methods), 'method')} x {_count(len(results['seeds']), 'seed')} x "
             f"{_count(len(conditions), 'condition')}, the same base model, prompts and seeds for every "
             f"method. Overrides applied to every run: {_code(' '.join(effective(results['overrides']))) or 'none'}.",
             ""]
    if results.get("missing"):
        lines += [f"**Missing or unfinished runs ({len(results['missing'])})**, left out of every number below: "
                  + ", ".join(results["missing"]), ""]
    lines += ["## Verdict", "", f"Generated from the numbers in results.json (drpo.lab.verdict). Every "
              f"comparison is a paired difference over seeds (a seed fixes the base model and the prompts) of the "
              f"primary outcome, *late accuracy*: the mean eval accuracy over the evaluations in the last "
              f"{round(100 * LATE_WINDOW)}% of a run's steps (definition at the end), with its two-sided {level}% "
              "Student t interval: *better* or *worse* when the interval excludes 0, *not separable* otherwise "
              "(or with one seed); no fixed threshold. Every method against the baseline is one family of tests: "
              "the separations that survive Holm's correction for it are named after each condition's comparisons. "
              "The area under the accuracy curve (learning speed) and "
              "collapse (stability) are the other two outcomes; the final evaluation alone stays a column. "
              f"Baseline: {results['baseline']}. {_eval_size(conditions)}", ""]
    for condition in conditions:
        lines += [" ".join(results["verdict"]["conditions"].get(condition, [])), ""]
    if results["verdict"]["overall"]:
        lines += ["**Overall.** " + " ".join(results["verdict"]["overall"]), ""]
    lines += ["![late accuracy](figures/late_accuracy.png)", "", "## Methods", "",
              "| method | loss | hyper-parameters |", "|---|---|---|"]
    for label, m in methods.items():
        hyper = ", ".join(f"{k}={v}" for k, v in m["hyper"].items()) or "defaults"
        if m.get("trainer"):
            hyper += "; trainer: " + ", ".join(f"{k}={v}" for k, v in m["trainer"].items())
        lines.append(f"| {label} | {m['loss']} | {hyper} |")
    lines += ["", "## Conditions", "", "What each condition injects, read from its runs' config.yaml, and the "
              "mismatch its runs measured at rollout time (|pi - mu| of the sampled tokens; mean and p99: mean "
              "over the non-collapsed runs of each run's mean over steps; max: the largest over those runs and "
              "steps).", "", CONDITIONS_HEADER, _rule(CONDITIONS_HEADER)]
    for condition, cond in conditions.items():
        mm = cond["mismatch"]
        lines.append(f"| {condition} | {_code(' '.join(cond['overrides'])) or '(none)'} | {cond['about']} "
                     f"| {cond['mechanism'] or '-'} | {_sci(mm['abs_mean'])} | {_sci(mm['p99'])} | {_sci(mm['max'])} |")
    lines += ["", f"Target accuracy for *steps to target*: {results['target_rule']}.", "",
              COLUMNS.format(level=level), ""]
    for condition, cond in conditions.items():
        lines += condition_section(condition, cond, results["baseline"], level)
    if results["sweeps"]:
        lines += ["## Swept hyper-parameters", "", f"Late accuracy (primary) and final accuracy: mean over seeds with "
                  f"the {level}% t interval of the mean; steps to target on the seed-mean curve.", ""]
        for sweep in results["sweeps"]:
            lines += sweep_table(sweep, results)
        if len(results["sweeps"]) > 1:
            lines += best_table(results, level)
        lines += [f"![{condition} sweep](figures/{condition}_sweep.png)" for condition in conditions] + [""]
    lines += ["## Gradient weights", ""]
    if drawn:
        lines += [f"w_t against pi - mu for {', '.join(drawn)} (drpo.plots.plot_weight_curves).", "",
                  "![gradient weights](figures/weights.png)", ""]
    if not_drawn:
        why = "custom hyper-parameters or top-k losses" + (
            ", or a boundary the trainer sets" if any(methods[label].get("trainer") for label in not_drawn) else "")
        lines += [f"Not drawn ({why}): {', '.join(not_drawn)}.", ""]
    lines += ["## Outcomes", "", "From drpo.lab.outcomes:", "", OUTCOMES_DOC.strip(), "",
              "## Statistics", "", "From drpo.lab.stats:", "", STATS_DOC.strip(), "",
              "## Collapse definition", "", "From drpo.lab.collapse:", "", COLLAPSE_DOC.strip(), ""]
    return "\n".join(lines)


CONDITIONS_HEADER = ("| condition | overrides | what it does | what it rounds and runs | mean abs(pi-mu) "
                     "| p99 abs(pi-mu) | max abs(pi-mu) |")

COLUMNS = """Columns of the tables (mean ± sample std over seeds; no std with one seed):
*late*: the primary outcome, mean greedy eval accuracy over the evaluations in the last 20% of the steps;
*late - baseline*: its paired difference against the baseline over the seeds both finished, with its {level}% t
interval, and the verdict it gives (better / worse / not separable); *area*: area under the eval accuracy curve
over the steps, divided by the span (the run's time-averaged accuracy: learning speed); *area - baseline*: its
paired difference and verdict, as for late accuracy; *start / best / final*:
greedy eval accuracy at step 0, its maximum, at the last evaluation; *final - baseline*: the paired difference
of final accuracy alone, for comparison;
*steps to target*: first eval step at which the seed-mean accuracy reaches the target (steps all seeds logged);
*collapsed*: seeds collapsed (definition at the end); *peak mean abs(pi-mu)*: the largest per-step mean
abs(pi - mu) of the sampled tokens at rollout time; *masked / corrective / amplified %*: tokens with gradient
weight w = 0 / w < 0 / w > 1, averaged over steps; *mean abs(w-1)*: how far the weights depart from the plain
policy gradient, averaged over steps; *w min / max*: the extremes of the weight over steps (mean over
seeds); *pull / pg*: with diagnose_pull=true, the gradient norm of the loss's pull part (w - 1) over that of
its policy-gradient part (w = 1), averaged over steps (drpo.diagnostics); *time (s)*: rollout + update seconds summed over steps (evaluation
excluded; parallel workers share the machine, so compare times within one sweep only)."""

TABLE_HEADER = ("| method | seeds | late | late - baseline | area | area - baseline | start | best | final "
                "| final - baseline "
                "| steps to target | collapsed "
                "| peak mean abs(pi-mu) | masked % | corrective % | amplified % | mean abs(w-1) | w min / max "
                "| pull / pg | time (s) |")


def condition_section(condition: str, cond: dict, baseline: str, level: int) -> list[str]:
    target = cond["target"]
    lines = [f"## {condition}", "", f"{cond['about']}. Overrides: {_code(' '.join(cond['overrides'])) or '(none)'}. "
             f"Target accuracy: {'-' if target is None else f'{target:.3f}'}.", "",
             f"![{condition} curves](figures/{condition}_curves.png)", "", TABLE_HEADER, _rule(TABLE_HEADER)]
    notes = []
    for label, m in cond["methods"].items():
        if m["seeds"] == 0:
            lines.append(f"| {label} | 0 |" + " - |" * (TABLE_HEADER.count("|") - 3))
            continue
        steps = m["steps_to_target"]
        collapsed = f"{m['collapsed']}/{m['seeds']}" if m["collapsed"] else "no"
        vs, auc_vs, final_vs = (_versus(m.get(key), label == baseline)
                                for key in ("vs_baseline", "auc_vs_baseline", "final_vs_baseline"))
        lines.append(f"| {label} | {m['seeds']} | {plus_minus(m['late'])} | {vs} | {plus_minus(m['auc'])} | {auc_vs} "
                     f"| {plus_minus(m['start'])} | {plus_minus(m['best'])} | {plus_minus(m['final'])} | {final_vs} "
                     f"| {'never' if steps is None else steps} | {collapsed} | {plus_minus(m['peak_mismatch'], '.2e')} "
                     f"| {_pct(m['masked_frac'])} | {_pct(m['corrective_frac'])} | {_pct(m['amplified_frac'])} "
                     f"| {plus_minus(m['weight_dev'], '.3f')} | {_range(m['weight_min'], m['weight_max'])} "
                     f"| {plus_minus(m['pull_to_pg'], '.2f')} | {plus_minus(m['time_s'], '.1f')} |")
        for seed, numbers in m["per_seed"].items():
            if numbers["collapse"]["collapsed"]:
                notes.append(f"- {label}, seed {seed}: {numbers['collapse']['reason']}.")
    lines.append("")
    if notes:
        lines += ["Collapses:", "", *notes, ""]
    lines += [f"![{condition} trust region](figures/{condition}_trust_region.png)", ""]
    return lines


def sweep_table(sweep: dict, results: dict) -> list[str]:
    """One swept loss hyper-parameter: per condition and value, late and final accuracy, steps to target,
    collapses."""
    lines = [f"{sweep['loss']}, {sweep['parameter']} swept:", "",
             "| condition | " + sweep["parameter"] + " | method | seeds | late | final | steps to target | collapsed |",
             "|---|---|---|---|---|---|---|---|"]
    for condition, cond in results["conditions"].items():
        for point in sweep["points"]:
            m = cond["methods"][point["label"]]
            if m["seeds"] == 0:
                continue
            late, final = _interval(m["late_interval"]), _interval(m["final_interval"])
            steps = m["steps_to_target"]
            lines.append(f"| {condition} | {point['value']:g} | {point['label']} | {m['seeds']} | {late} | {final} "
                         f"| {'never' if steps is None else steps} | {m['collapsed']}/{m['seeds']} |")
    return [*lines, ""]


def best_table(results: dict, level: int) -> list[str]:
    """Each swept loss at its best value per condition, paired against the first loss's best."""
    first = results["sweeps"][0]["loss"]
    lines = [f"Each loss at its best setting (highest mean late accuracy in that condition), paired against "
             f"{first} at its best over seeds, {level}% t interval. The best is chosen on the same runs it is "
             "scored on, so it is optimistic, the more so the more values a loss was given.", "",
             f"| condition | loss | best setting | late | best - {first}'s best |", "|---|---|---|---|---|"]
    for condition, cond in results["conditions"].items():
        for entry in cond["sweep_best"]:
            d = entry["vs_first"]
            vs = "reference" if d is None else f"{format_difference(d)} {d['verdict']}"
            lines.append(f"| {condition} | {entry['loss']} | {entry['parameter']}={entry['value']:g} "
                         f"| {_interval(entry['late'])} | {vs} |")
    return [*lines, ""]


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


def _versus(d: dict | None, is_baseline: bool) -> str:
    if is_baseline:
        return "baseline"
    return "-" if d is None else f"{format_difference(d)} {d['verdict']}"


def _eval_size(conditions: dict) -> str:
    sizes = sorted({n for cond in conditions.values() for n in cond["eval_prompts"]})
    if not sizes:
        return ""
    worst = 0.5 / min(sizes) ** 0.5
    return (f"Each evaluation: {', '.join(str(n) for n in sizes)} held-out prompts, greedy; the standard error of "
            f"one evaluation is at most 0.5 / sqrt(n) = {worst:.4f} (at accuracy 0.5).")


def _interval(interval: dict) -> str:
    if interval["low"] is None:
        return f"{interval['mean']:.3f}"
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _range(low: dict, high: dict) -> str:
    return "-" if low["mean"] is None else f"{low['mean']:.2f} / {high['mean']:.2f}"


def _pct(stat: dict) -> str:
    return "-" if stat["mean"] is None else f"{100 * stat['mean']:.2f}"


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def effective(overrides: list[str]) -> list[str]:
    """The overrides that take effect, in order: of several ``key=value`` for one key, the last (the sweep's
    evaluation size, then the command line's).

    >>> effective(["task.n_eval=1200", "eval.samples=0", "task.n_eval=640", "steps=20"])
    ['eval.samples=0', 'task.n_eval=640', 'steps=20']
    """
    last = {item.split("=", 1)[0]: index for index, item in enumerate(overrides)}
    return [item for index, item in enumerate(overrides) if last[item.split("=", 1)[0]] == index]


def _code(text: str) -> str:
    return f"`{text}`" if text else ""
