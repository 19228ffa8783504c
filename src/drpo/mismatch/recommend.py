"""Which delta this project's results support for a mismatch of a given size.

The evidence is the committed delta sweep (docs/results/delta/results.json): DRPO at several delta under
conditions whose mismatch differs by an order of magnitude (fp8 rollouts; rollouts 4 optimizer steps
stale), 5 seeds each, every run's p99 of |pi_old - mu| recorded. For a user's mismatch (the p99 of
|pi_old - mu| of their dump) the nearest condition, on a log scale, answers: the deltas whose late
accuracy (the sweep's primary outcome, drpo.experiments.outcomes) is not separably worse than the best
delta's (paired 95% t interval over seeds, as the sweep's report computes it; per comparison, so the range
errs on the narrow side, and the deltas still worse after Holm's correction for the several comparisons are
named beside it), and the recommended delta: the loss's default when that range holds it, else the
supported delta nearest to it. Outside the measured mismatch the answer is the nearest condition's,
said to be an extrapolation.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from drpo.experiments.outcomes import PRIMARY
from drpo.experiments.stats import holm, paired_difference
from drpo.experiments.verdict import OUTCOME, per_seed_values

# the committed sweep, read from the repository this package sits in (absent from an installed wheel)
EVIDENCE = Path(__file__).resolve().parents[3] / "docs" / "results" / "delta" / "results.json"
SWEEP_LOSS = "drpo"  # the loss whose delta the sweep varies


@dataclass(frozen=True)
class Evidence:
    """One condition of the delta sweep."""

    condition: str
    about: str
    p99: float  # mean over the sweep's DRPO runs of their p99 |pi_old - mu| (per step, averaged over steps)
    p99_range: tuple[float, float]  # lowest and highest of those runs' means (the loss moves the policy too)
    best: float  # delta of the highest mean late accuracy
    supported: tuple[float, ...]  # deltas not separably worse than the best (paired over seeds)
    worse: tuple[float, ...]
    worse_corrected: tuple[float, ...]  # the ones still worse after Holm's correction for every delta against the best
    compared: int  # how many deltas were compared with the best
    seeds: int
    runs: str  # what ran: model, task, steps


@dataclass(frozen=True)
class Recommendation:
    mismatch: float  # the user's p99 |pi_old - mu|
    delta: float
    evidence: Evidence
    placement: str  # "within" the nearest condition's measured range, "between" conditions, or "outside" all
    source: str  # the results file

    def lines(self) -> list[str]:
        """The recommendation in plain sentences (console and markdown)."""
        e = self.evidence
        supported = _listed(e.supported)
        lines = [f"p99 |pi_old - mu| = {self.mismatch:.3g}: nearest measured condition '{e.condition}' ({e.about}; "
                 f"p99 {e.p99:.3g}, {e.p99_range[0]:.3g} to {e.p99_range[1]:.3g} across its runs).",
                 f"Supported delta: {min(e.supported):g} to {max(e.supported):g} (not separably worse than the best, "
                 f"{e.best:g}, in {OUTCOME}: paired 95% t interval over {e.seeds} seeds; tried and supported: "
                 f"{supported}" + (f"; worse: {_listed(e.worse)}; still worse after Holm's correction for the "
                                   f"{e.compared} comparisons: {_listed(e.worse_corrected) or 'none'}" if e.worse else "")
                 + ").",
                 f"Recommended: delta = {self.delta:g}. Evidence: {self.source}, {e.runs}."]
        if self.placement != "within":
            where = "between the measured conditions" if self.placement == "between" else \
                "outside every measured condition"
            lines.append(f"This mismatch lies {where}: the nearest one's answer is an extrapolation; a delta sweep "
                         "on your task (`drpo compare --methods drpo:delta=...`) would settle it.")
        return lines


def evidence(results: dict, sweep_dir: Path | None = None) -> list[Evidence]:
    """The conditions of a delta sweep's results.json (as `drpo report` writes it), DRPO's points only."""
    points = next((s["points"] for s in results["sweeps"] if s["loss"] == SWEEP_LOSS), None)
    if not points:
        raise ValueError(f"the results have no delta sweep of '{SWEEP_LOSS}'")
    out = []
    for name, condition in results["conditions"].items():
        methods = {p["value"]: condition["methods"][p["label"]] for p in points if p["label"] in condition["methods"]}
        outcome = {delta: per_seed_values(m, PRIMARY) for delta, m in methods.items()}
        best = max(methods, key=lambda d: methods[d][PRIMARY]["mean"])
        to_best = {d: paired_difference(outcome[d], outcome[best], results["level"]) for d in sorted(methods) if d != best}
        adjusted = holm({d: diff["p"] for d, diff in to_best.items()})
        worse = tuple(d for d, diff in to_best.items() if diff["verdict"] == "worse")
        worse_corrected = tuple(d for d in worse if adjusted[d] < 1 - results["level"])
        p99s = [_mean([run["mismatch"]["p99"] for run in m["per_seed"].values()]) for m in methods.values()]
        out.append(Evidence(
            condition=name, about=condition["about"].split(":")[0], p99=_mean(p99s),
            p99_range=(min(p99s), max(p99s)), best=best,
            supported=tuple(d for d in sorted(methods) if d not in worse), worse=worse, worse_corrected=worse_corrected,
            compared=len(to_best),
            seeds=min(m["seeds"] for m in methods.values()),
            runs=_describe_runs(results, sweep_dir, name, points[0]["label"])))
    return out


def recommend(mismatch: float, default_delta: float, conditions: list[Evidence], source: str) -> Recommendation:
    """The nearest condition (log scale) to ``mismatch`` and the delta it supports (see the module docstring)."""
    if not mismatch > 0:
        raise ValueError(f"a mismatch of {mismatch} has no delta to recommend (pi_old equals mu on these tokens)")
    nearest = min(conditions, key=lambda e: abs(math.log(mismatch / e.p99)))
    delta = min(nearest.supported, key=lambda d: abs(math.log(d / default_delta)))
    if nearest.p99_range[0] <= mismatch <= nearest.p99_range[1]:
        placement = "within"
    elif min(e.p99_range[0] for e in conditions) <= mismatch <= max(e.p99_range[1] for e in conditions):
        placement = "between"
    else:
        placement = "outside"
    return Recommendation(mismatch, delta, nearest, placement, source)


def load_evidence(path: Path = EVIDENCE) -> list[Evidence]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: the committed delta sweep is not here (it ships with the repository, "
                                "not with an installed package); run `drpo mismatch` from a clone")
    return evidence(json.loads(path.read_text()), path.parent)


def _listed(deltas: tuple[float, ...]) -> str:
    return ", ".join(f"{d:g}" for d in deltas)


def _mean(values: list[float | None]) -> float:
    return statistics.fmean(v for v in values if v is not None)


def _describe_runs(results: dict, sweep_dir: Path | None, condition: str, label: str) -> str:
    """'model small, task arith, 100 steps per run' from one run's config.yaml (on disk or in the sweep's archive)."""
    from drpo.experiments.archive import RunArchive
    from drpo.experiments.methods import parse_method
    from drpo.experiments.runs import run_dir

    steps = next((o.split("=", 1)[1] for o in results.get("overrides", []) if o.startswith("steps=")), "?")
    files = {}
    if sweep_dir is not None and results.get("seeds"):
        path = run_dir(sweep_dir, condition, parse_method(label).slug, results["seeds"][0])
        files = RunArchive(sweep_dir).files(path)
    if "config.yaml" not in files:
        return f"{steps} steps per run"
    config = yaml.safe_load(files["config.yaml"])
    return f"model {config['model']['name']}, task {config['task']['name']}, {steps} steps per run"


@dataclass(frozen=True)
class Advice:
    """One source's recommendation and what each trust region does to its tokens at the recommended delta."""

    label: str
    recommendation: Recommendation
    trust: dict[str, float]  # trust_region_stats at the recommended delta, Binary-TV at it too


def advise(analyses, sources, path: Path = EVIDENCE) -> list[Advice]:
    """A recommendation for each analysed source (its main comparison's p99 |pi - mu|), the trust regions at it.

    The default it prefers is DRPO's, read from the loss (``get_loss("drpo").hyper.delta``).
    """
    from drpo.losses import get_loss
    from drpo.mismatch.stats import trust_region_stats

    conditions = load_evidence(path)
    default = get_loss(SWEEP_LOSS).hyper.delta
    try:
        shown = path.relative_to(EVIDENCE.parents[3])
    except ValueError:
        shown = path
    advice = []
    for analysis, data in zip(analyses, sources, strict=True):
        rec = recommend(analysis.pairs[analysis.main_pair]["abs_p_p99"], default, conditions, str(shown))
        target = data.log_prob if analysis.trust_pair == "total" else data.old_log_prob
        trust = trust_region_stats(target, data.rollout_log_prob, data.advantage, rec.delta,
                                   tv_delta=rec.delta if rec.delta <= 1 else None)
        advice.append(Advice(analysis.label, rec, trust))
    return advice
