"""results.json: the numbers of a sweep, per condition and method, computed from the runs' files only.

Per run (:func:`run_numbers`): eval accuracy at the start, its best and final values, the primary outcome
(late accuracy: mean over the last evaluations) and the area under the accuracy curve
(drpo.lab.outcomes), the trust-region
metrics averaged over steps (masked w = 0, corrective w < 0, amplified w > 1, mean |w - 1|, and with
diagnose_pull=true the gradient-norm ratio of the pull part to the policy-gradient part), the extremes of
the weight over steps, the mismatch
the run measured (mean, p99 and max of |pi - mu| at rollout time), rollout + update seconds, the collapse
verdict. Per condition and method: mean and sample std over seeds, steps to target (seed-mean curve), and
the paired differences of late accuracy (the verdict's, with its Holm-adjusted p over the family of every
method against the baseline), area and final accuracy against the baseline (drpo.lab.stats).
Per condition: the
mechanism it injects (what the behavior policy rounds, updates per batch, lag), the mismatch measured by
its runs, the evaluation size. Per sweep of one loss hyper-parameter (:func:`hyper_sweeps`): one point per
value. The verdict (drpo.lab.verdict) is generated from these numbers.
"""

from __future__ import annotations

import math
import statistics

from drpo.lab.collapse import as_number, detect_collapse
from drpo.lab.methods import HEADLINE_LOSS
from drpo.lab.outcomes import PRIMARY, accuracy_area, late_accuracy
from drpo.lab.runs import Run, seed_mean_curve, series
from drpo.lab.stats import LEVEL, holm, mean_interval, mean_std, paired_difference
from drpo.lab.verdict import per_seed_values, verdict

TARGET_MARGIN = 0.15  # default target: start accuracy + this
MIN_SWEEP_POINTS = 3  # a loss hyper-parameter taking this many values in one sweep gets its own figure
# averaged over steps per run, then mean +- std over seeds
STEP_MEANS = {"masked_frac": "loss/masked_frac", "corrective_frac": "loss/corrective_frac",
              "amplified_frac": "loss/amplified_frac", "weight_dev": "loss/weight_dev",
              "pull_to_pg": "diagnose/pull_to_pg"}  # the last only with diagnose_pull=true
TABLE_KEYS = ("start", "best", "final", "late", "auc", "peak_mismatch", *STEP_MEANS, "weight_min", "weight_max", "time_s")


def run_numbers(run: Run) -> dict:
    curve = series(run.records, "eval/accuracy")
    evals = [v for _, v in curve]
    mismatch = [v for _, v in series(run.records, "mismatch/abs_mean")]
    p99 = [v for _, v in series(run.records, "mismatch/abs_p_p99")]
    extremes = [abs(v) for key in ("mismatch/max", "mismatch/min") for _, v in series(run.records, key)]
    times = [as_number(r.get("time/rollout_s", 0)) + as_number(r.get("time/update_s", 0))
             for r in run.records if "time/rollout_s" in r]
    prompts = [v for _, v in series(run.records, "eval/prompts")]
    collapse = detect_collapse(run.records, stopped=run.summary.get("stopped"))
    return {
        "start": evals[0] if evals else None,
        "best": max(evals) if evals else None,
        "final": evals[-1] if evals else None,
        "late": late_accuracy(curve),
        "auc": accuracy_area(curve),
        "peak_mismatch": max(mismatch) if mismatch else None,
        **{name: _mean([v for _, v in series(run.records, key)]) for name, key in STEP_MEANS.items()},
        "weight_min": min((v for _, v in series(run.records, "loss/weight_min")), default=None),
        "weight_max": max((v for _, v in series(run.records, "loss/weight_max")), default=None),
        "mismatch": {"abs_mean": _mean(mismatch), "p99": _mean(p99), "max": max(extremes) if extremes else None},
        "eval_prompts": int(prompts[-1]) if prompts else (run.config.get("eval") or {}).get("prompts"),
        "time_s": sum(times),
        "last_step": max((int(r["step"]) for r in run.records), default=0),
        "collapse": {"collapsed": collapse.collapsed, "step": collapse.step, "reason": collapse.reason},
    }


def steps_to_target(runs: list[Run], target: float) -> int | None:
    """First eval step at which the seed-mean eval accuracy (steps all seeds logged) reaches ``target``."""
    return next((step for step, mean, _, _ in seed_mean_curve(runs, "eval/accuracy", common=True)
                 if mean >= target - 1e-12), None)


def baseline_label(methods: dict, baseline: str | None = None) -> str | None:
    """The method every other is compared with: ``baseline`` if given, else the method labelled like the headline
    loss (drpo, at the recommended delta), else the first on that loss (e.g. drpo:delta=0.3), else the first method."""
    if baseline is not None:
        if baseline not in methods:
            raise ValueError(f"baseline '{baseline}' is not a method of this sweep: {', '.join(methods)}")
        return baseline
    if HEADLINE_LOSS in methods:
        return HEADLINE_LOSS
    return next((label for label, m in methods.items() if m.get("canonical") == HEADLINE_LOSS), next(iter(methods), None))


def summarize(grid: dict, runs: list[Run], target: float | None = None, baseline: str | None = None) -> dict:
    """results.json: per condition and method, the table's numbers (and each seed's) plus the verdict."""
    target = grid.get("target") if target is None else target
    base = baseline_label(grid["methods"], baseline)
    results = {"methods": grid["methods"], "seeds": grid["seeds"], "overrides": grid.get("overrides", []),
               "target_given": target, "target_rule": _target_rule(target), "baseline": base, "level": LEVEL,
               "sweeps": hyper_sweeps(grid["methods"]), "conditions": {}}
    for condition, spec in grid["conditions"].items():
        crun = [r for r in runs if r.condition == condition]
        numbers = {(r.method, r.seed): run_numbers(r) for r in crun}
        starts = [n["start"] for n in numbers.values() if n["start"] is not None]
        cond_target = target if target is not None else (statistics.fmean(starts) + TARGET_MARGIN if starts else None)
        methods = {}
        for label in grid["methods"]:
            mruns = sorted((r for r in crun if r.method == label), key=lambda r: r.seed)
            per_seed = {r.seed: numbers[(label, r.seed)] for r in mruns}
            entry = {key: mean_std([n[key] for n in per_seed.values()]) for key in TABLE_KEYS}
            entry["seeds"] = len(mruns)
            entry["collapsed"] = sum(n["collapse"]["collapsed"] for n in per_seed.values())
            entry["steps_to_target"] = steps_to_target(mruns, cond_target) if mruns and cond_target is not None else None
            entry["final_interval"] = mean_interval([n["final"] for n in per_seed.values()])
            entry["late_interval"] = mean_interval([n["late"] for n in per_seed.values()])
            entry["per_seed"] = per_seed
            methods[label] = entry
        for label, entry in methods.items():  # paired against the baseline on the seeds both finished
            for key, outcome in (("vs_baseline", PRIMARY), ("final_vs_baseline", "final"), ("auc_vs_baseline", "auc")):
                entry[key] = (None if label == base or base not in methods else paired_difference(
                    per_seed_values(entry, outcome), per_seed_values(methods[base], outcome)))
        family = holm({label: m["vs_baseline"]["p"] for label, m in methods.items() if m["vs_baseline"]})
        for label, p_holm in family.items():  # every method against the baseline is one family of tests
            methods[label]["vs_baseline"]["p_holm"] = p_holm
        weak = sorted({r.seed for r in crun if (r.summary.get("base_model") or {}).get("missed_target")})
        results["conditions"][condition] = {
            "about": spec["about"], "overrides": spec["overrides"], "target": cond_target, "methods": methods,
            "weak_base_seeds": weak, "mechanism": _mechanism(crun), "mismatch": _condition_mismatch(numbers),
            "eval_prompts": sorted({n["eval_prompts"] for n in numbers.values() if n["eval_prompts"]}),
            "sweep_best": best_settings(results["sweeps"], methods)}
    results["verdict"] = verdict(results)
    return results


def best_settings(sweeps: list[dict], methods: dict) -> list[dict]:
    """Each swept loss at its best value in one condition (highest mean late accuracy, the primary outcome), and
    the paired difference of each best against the first sweep's best: [{'loss', 'parameter', 'value', 'label',
    'late', 'vs_first'}]. The best is picked on the same runs it is scored on, so it is biased upward, the more so
    the more values were tried; comparing two losses each at its best is fair only with similar grids."""
    best = []
    for sweep in sweeps:
        scored = [(methods[p["label"]][PRIMARY]["mean"], p) for p in sweep["points"]
                  if methods.get(p["label"], {}).get("seeds") and methods[p["label"]][PRIMARY]["mean"] is not None]
        if scored:
            point = max(scored, key=lambda item: item[0])[1]
            best.append({"loss": sweep["loss"], "parameter": sweep["parameter"], "value": point["value"],
                         "label": point["label"], "late": methods[point["label"]]["late_interval"]})
    for entry in best:
        entry["vs_first"] = (None if entry is best[0] else paired_difference(
            per_seed_values(methods[entry["label"]]), per_seed_values(methods[best[0]["label"]])))
    return best


def hyper_sweeps(methods: dict) -> list[dict]:
    """Losses whose methods differ in one hyper-parameter only (or in several that always take one value
    together, e.g. dppo_binary_tv's delta_low = delta_high), with at least MIN_SWEEP_POINTS values:
    [{'loss', 'parameter', 'points': [{'value', 'label'}, ...] by value}]. Methods of one loss that also
    differ otherwise (another anchor, delta_low != delta_high) make no sweep. A method carrying trainer
    settings (methods.TRAINER_SECTIONS: its boundary set while it trains) is no point of a sweep."""
    from drpo.losses import get_loss

    by_loss: dict[str, list[tuple[str, dict]]] = {}
    for label, m in methods.items():
        if m.get("trainer"):
            continue
        loss = get_loss(m["loss"], **m["hyper"])
        by_loss.setdefault(loss.name, []).append((label, loss.hyper.model_dump()))
    sweeps = []
    for loss, members in by_loss.items():
        keys = [k for k in members[0][1] if len({repr(h[k]) for _, h in members}) > 1]
        values = [{h[k] for k in keys} for _, h in members]
        if not keys or any(len(v) != 1 or not isinstance(next(iter(v)), (int, float)) for v in values):
            continue
        points, seen = [], set()
        for (label, _), value in sorted(zip(members, (next(iter(v)) for v in values), strict=True),
                                        key=lambda item: item[1]):
            if value not in seen:  # two labels of one setting (drpo, drpo:delta=0.3): the first one drawn
                seen.add(value)
                points.append({"value": value, "label": label})
        if len(points) >= MIN_SWEEP_POINTS:
            sweeps.append({"loss": loss, "parameter": "=".join(keys), "points": points})
    return sweeps


def _mechanism(runs: list[Run]) -> str:
    """What the condition's runs inject, from their own config.yaml: what mu rounds, updates, lag."""
    from drpo.behavior.modes import ROLLOUT_MODES

    settings = sorted({(r.config["rollout"]["precision"], r.config["updates_per_batch"], r.config["rollout"]["lag"])
                       for r in runs if r.config})
    rounds = {name: mode.rounds for name, mode in ROLLOUT_MODES.items()}
    return "; ".join(f"{precision} behavior policy (rounds {rounds.get(precision, 'unknown')}), "
                     f"{updates} update{'s' if updates > 1 else ''} per rollout batch, lag {lag}"
                     for precision, updates, lag in settings)


def _condition_mismatch(numbers: dict) -> dict:
    """|pi - mu| the condition's non-collapsed runs measured: mean over runs of each run's mean over steps
    (mean and p99), and the largest over runs and steps (max); a collapsed run measures its own blow-up."""
    kept = [n["mismatch"] for n in numbers.values() if not n["collapse"]["collapsed"]]
    means = [m["abs_mean"] for m in kept if m["abs_mean"] is not None]
    p99 = [m["p99"] for m in kept if m["p99"] is not None]
    extremes = [m["max"] for m in kept if m["max"] is not None]
    return {"abs_mean": _mean(means), "p99": _mean(p99), "max": max(extremes) if extremes else None,
            "runs": len(kept)}


def _mean(values: list[float]) -> float | None:
    """Mean of the finite values (a blown-up step is the collapse rule's business, not an average's)."""
    values = [v for v in values if math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _target_rule(target: float | None) -> str:
    if target is None:
        return f"each condition's mean start accuracy + {TARGET_MARGIN}"
    return f"fixed eval accuracy {target:.3f} (--target)"
