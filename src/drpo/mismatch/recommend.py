"""Which delta this project's results support for a mismatch of a given size.

The evidence is the committed delta sweep (docs/results/delta/results.json): DRPO at several delta under
conditions whose mismatch differs by an order of magnitude (fp8 rollouts; rollouts 4 optimizer steps
stale), 5 seeds each, every run's p99 of |pi_old - mu| recorded. For a user's mismatch (the p99 of
|pi_old - mu| of their dump) the nearest condition, on a log scale, answers: the deltas whose late
accuracy (the sweep's primary outcome, drpo.lab.outcomes) is not separably worse than the best
delta's (paired 95% t interval over seeds, as the sweep's report computes it; per comparison, so the range
errs on the narrow side, and the deltas still worse after Holm's correction for the several comparisons are
named beside it), and the recommended delta: the loss's default when that range holds it, else the
supported delta nearest to it. Outside the measured mismatch the answer is the nearest condition's,
said to be an extrapolation.

The sweep itself stays in the repository; what this module reads is its summary per condition, the package
data file evidence.json next to it, which the lab computes from the sweep (``python -m drpo.lab.evidence``,
drpo/lab/evidence.py; a test checks the file against the committed sweep). So the recommendation works from
an installed wheel, and nothing here reads the lab's statistics or the checkout.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from importlib.resources import files

from drpo.losses import get_loss
from drpo.mismatch.stats import trust_region_stats

EVIDENCE_FILE = "evidence.json"  # package data of drpo.mismatch
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
    outcome: str  # the outcome the deltas are compared in, in words (the sweep's primary outcome)

    @classmethod
    def from_json(cls, record: dict) -> Evidence:
        """An Evidence from its record in evidence.json (lists back to tuples)."""
        names = {f.name for f in fields(cls)}
        if set(record) != names:
            raise ValueError(f"an evidence record has the keys {sorted(record)}, expected {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


@dataclass(frozen=True)
class Recommendation:
    mismatch: float  # the user's p99 |pi_old - mu|
    delta: float
    evidence: Evidence
    placement: str  # "within" the nearest condition's measured range, "between" conditions, or "outside" all
    source: str  # the sweep's results file, as the evidence names it

    def lines(self) -> list[str]:
        """The recommendation in plain sentences (console and markdown)."""
        e = self.evidence
        supported = _listed(e.supported)
        lines = [f"p99 |pi_old - mu| = {self.mismatch:.3g}: nearest measured condition '{e.condition}' ({e.about}; "
                 f"p99 {e.p99:.3g}, {e.p99_range[0]:.3g} to {e.p99_range[1]:.3g} across its runs).",
                 f"Supported delta: {min(e.supported):g} to {max(e.supported):g} (not separably worse than the best, "
                 f"{e.best:g}, in {e.outcome}: paired 95% t interval over {e.seeds} seeds; tried and supported: "
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


def read_evidence() -> dict:
    """evidence.json, the package data this module recommends from: {"source", "command", "conditions", ...}."""
    return json.loads(files("drpo.mismatch").joinpath(EVIDENCE_FILE).read_text(encoding="utf-8"))


def load_evidence(document: dict | None = None) -> list[Evidence]:
    """The conditions of the delta sweep, from evidence.json (or ``document``, read from it already)."""
    document = read_evidence() if document is None else document
    conditions = [Evidence.from_json(record) for record in document["conditions"]]
    if not conditions:
        raise ValueError(f"{EVIDENCE_FILE} holds no condition of a delta sweep")
    return conditions


def _listed(deltas: tuple[float, ...]) -> str:
    return ", ".join(f"{d:g}" for d in deltas)


@dataclass(frozen=True)
class Advice:
    """One source's recommendation and what each trust region does to its tokens at the recommended delta."""

    label: str
    recommendation: Recommendation
    trust: dict[str, float]  # trust_region_stats at the recommended delta, Binary-TV at it too


def advise(analyses, sources) -> list[Advice]:
    """A recommendation for each analysed source (its main comparison's p99 |pi - mu|), the trust regions at it.

    The default it prefers is DRPO's, read from the loss (``get_loss("drpo").hyper.delta``).
    """
    document = read_evidence()
    conditions = load_evidence(document)
    default = get_loss(SWEEP_LOSS).hyper.delta
    advice = []
    for analysis, data in zip(analyses, sources, strict=True):
        rec = recommend(analysis.pairs[analysis.main_pair]["abs_p_p99"], default, conditions, document["source"])
        target = data.log_prob if analysis.trust_pair == "total" else data.old_log_prob
        trust = trust_region_stats(target, data.rollout_log_prob, data.advantage, rec.delta,
                                   tv_delta=rec.delta if rec.delta <= 1 else None)
        advice.append(Advice(analysis.label, rec, trust))
    return advice
