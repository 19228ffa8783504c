"""Mismatch statistics of sampled tokens: pure functions of log-prob arrays.

Three comparisons, each of a "target" log-prob against an "anchor" log-prob of the same tokens:

    engine   pi_old vs mu   same weights, other numerics: the training-inference mismatch
    drift    pi vs pi_old   the policy's own updates since the rollout (staleness)
    total    pi vs mu       what a trust region anchored on mu sees at the update

For each: the mean, quantiles and max of |pi - mu| and |log pi - log mu|, the share of tokens in
tolerance bands, the same split by the anchor's token probability, and KL(mu || pi) estimated from the
sampled tokens (k1 = E[log mu - log pi]; k3 = E[r - 1 - log r], r = pi / mu, always >= 0). What each trust
region would do with exactly these tokens comes from drpo.losses itself (:func:`trust_region_stats`).
The trainer's per-step mismatch/* metrics (:func:`step_metrics`) are the same numbers, so a `drpo train` run
and a file from any engine are measured alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from drpo.mismatch.format import TokenLogProbs

QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
# (key, what it counts); thresholds as the issue tracker discussions quote them
BANDS = {
    "ratio_outside_0.9_1.1": "ratio pi/mu outside [0.9, 1.1]",
    "abs_logp_gt_ln2": "|log pi - log mu| > ln 2 (ratio beyond 2x either way)",
    "abs_p_gt_0.05": "|pi - mu| > 0.05",
    "abs_p_gt_0.15": "|pi - mu| > 0.15 (the Binary-TV boundary at delta 0.15)",
}
PROB_BUCKETS = (0.0, 1e-3, 1e-2, 0.1, 0.5, 0.9, 1.0)  # edges of the anchor probability mu; rare tokens first
PAIRS = {  # name: (target field, anchor field, title)
    "engine": ("old_log_prob", "rollout_log_prob", "engine mismatch: pi_old vs mu"),
    "drift": ("log_prob", "old_log_prob", "policy drift: pi vs pi_old"),
    "total": ("log_prob", "rollout_log_prob", "total: pi vs mu"),
}
# (label, registry name, hyper-parameters): the trust regions whose masks the report applies
TRUST_REGIONS = (
    ("ppo_clip 0.2", "ppo_clip", {}),
    ("ppo_clip 0.2/0.28", "ppo_clip", {"eps_high": 0.28}),
    ("dppo_binary_tv 0.15", "dppo_binary_tv", {}),
    ("dppo_binary_kl 0.05", "dppo_binary_kl", {}),
)
JUMP_FACTOR = 2.0  # a step's mean |pi - mu| above this multiple of the first steps' median is flagged
JUMP_FLOOR = 1e-4  # ... and above it by at least this much (fp32 noise doubling is not a jump)


def pair_stats(target: np.ndarray, anchor: np.ndarray) -> dict[str, float]:
    """Statistics of ``target`` against ``anchor`` log-probs (1-D, same tokens); NaN when there are none.

    >>> s = pair_stats(np.log([0.5, 0.2]), np.log([0.5, 0.1]))
    >>> round(s["abs_p_max"], 3), s["ratio_outside_0.9_1.1"]
    (0.1, 0.5)
    """
    target, anchor = np.asarray(target, np.float64), np.asarray(anchor, np.float64)
    n = len(target)
    if n == 0:
        return {"tokens": 0}
    log_ratio = target - anchor  # [N] log pi - log mu
    shift = np.exp(target) - np.exp(anchor)  # [N] pi - mu, from the log-probs (never from a clamped ratio)
    abs_shift, abs_log = np.abs(shift), np.abs(log_ratio)
    out: dict[str, float] = {"tokens": n}
    for name, values in (("abs_p", abs_shift), ("abs_logp", abs_log)):
        out[f"{name}_mean"] = float(values.mean())
        quantiles = np.quantile(values, list(QUANTILES.values()))
        out.update({f"{name}_{q}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)})
        out[f"{name}_max"] = float(values.max())
    out["p_diff_min"], out["p_diff_max"] = float(shift.min()), float(shift.max())
    out["logp_mean"] = float(log_ratio.mean())
    out["logp_std"] = float(log_ratio.std())
    out["logp_rms"] = float(np.sqrt(np.mean(log_ratio ** 2)))
    ratio = np.exp(log_ratio)
    out["ratio_outside_0.9_1.1"] = float(np.mean((ratio < 0.9) | (ratio > 1.1)))
    out["abs_logp_gt_ln2"] = float(np.mean(abs_log > math.log(2)))
    out["abs_p_gt_0.05"] = float(np.mean(abs_shift > 0.05))
    out["abs_p_gt_0.15"] = float(np.mean(abs_shift > 0.15))
    out["kl_k1"] = float(np.mean(-log_ratio))  # E_mu[log mu - log pi]
    out["kl_k3"] = float(np.mean(np.expm1(log_ratio) - log_ratio))  # E_mu[r - 1 - log r]
    return out


def bucket_stats(target: np.ndarray, anchor: np.ndarray) -> list[dict[str, float]]:
    """The same split by the anchor's probability: rare tokens are where ratios explode."""
    mu = np.exp(anchor)
    rows = []
    for low, high in zip(PROB_BUCKETS[:-1], PROB_BUCKETS[1:], strict=True):
        inside = (mu >= low) & ((mu < high) if high < 1.0 else (mu <= high))
        stats = pair_stats(target[inside], anchor[inside])
        rows.append({"low": low, "high": high, "share": float(inside.mean()) if len(mu) else 0.0, **stats})
    return rows


@torch.no_grad()
def trust_region_stats(log_prob: np.ndarray, rollout_log_prob: np.ndarray, advantage: np.ndarray | None,
                       drpo_delta: float | None = None, tv_delta: float | None = None) -> dict[str, float]:
    """What each trust region does with these tokens, computed by drpo.losses on them.

    ``masked/<label>``: the share of tokens whose gradient weight is 0; ``drpo/...``: DRPO's weight at
    ``drpo_delta`` (default: the loss's default), its share above 1, share below 0 (corrective), min, max, and
    ``drpo/delta`` the delta used; ``tv_delta`` adds DPPO Binary-TV at that boundary. The masks depend on the advantage's
    sign (a token is dropped only when it moved the way its advantage pushes); without advantages each
    figure is the mean over A = +1 and A = -1, i.e. advantages of random sign.
    """
    from drpo.losses import get_loss

    pi = torch.as_tensor(log_prob, dtype=torch.float64).unsqueeze(0)  # [1, N]
    mu = torch.as_tensor(rollout_log_prob, dtype=torch.float64).unsqueeze(0)  # [1, N]
    mask = torch.ones_like(pi)
    signs = [torch.as_tensor(advantage, dtype=torch.float64).unsqueeze(0)] if advantage is not None else \
        [torch.ones_like(pi), -torch.ones_like(pi)]
    out: dict[str, float] = {}

    def mean_over_signs(loss) -> list[torch.Tensor]:
        return [loss(log_prob=pi, rollout_log_prob=mu, advantages=a, response_mask=mask).weight for a in signs]

    regions = [*TRUST_REGIONS, *([(f"dppo_binary_tv {tv_delta:g}", "dppo_binary_tv",
                                   {"delta_low": tv_delta, "delta_high": tv_delta})] if tv_delta is not None else [])]
    for label, name, hyper in regions:
        weights = mean_over_signs(get_loss(name, **hyper))
        out[f"masked/{label}"] = float(np.mean([(w == 0).double().mean().item() for w in weights]))
    drpo = get_loss("drpo", **({} if drpo_delta is None else {"delta": drpo_delta}))
    weights = torch.cat(mean_over_signs(drpo), dim=1)  # [1, N * signs]
    out["drpo/delta"] = drpo.hyper.delta
    out["drpo/w_gt_1"] = (weights > 1).double().mean().item()
    out["drpo/w_lt_0"] = (weights < 0).double().mean().item()
    out["drpo/w_min"], out["drpo/w_max"] = weights.min().item(), weights.max().item()
    return out


@dataclass
class Analysis:
    """Everything the report shows about one source (a file, a run, a rollout precision)."""

    label: str
    tokens: int
    sequences: int
    steps: int
    fields: list[str]
    pairs: dict[str, dict[str, float]]  # pair name -> pair_stats
    buckets: dict[str, list[dict[str, float]]]  # pair name -> bucket_stats
    trust: dict[str, float]
    trust_pair: str
    main_pair: str
    trend: list[dict[str, float]]  # per step, of the main pair
    jumps: list[int]  # steps flagged by trend_jumps
    engines: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)  # e.g. {"rounds": ...} in the model mode


def analyse(data: TokenLogProbs, drpo_delta: float | None = None) -> Analysis:
    """All statistics of one source; the trust regions (DRPO at ``drpo_delta``, default: the loss's default) see
    log pi if present, else log pi_old, against mu."""
    pairs, buckets = {}, {}
    for name, (target, anchor, _) in PAIRS.items():
        t, a = getattr(data, target), getattr(data, anchor)
        if t is not None and a is not None:
            pairs[name] = pair_stats(t, a)
            buckets[name] = bucket_stats(t, a)
    main = "engine" if "engine" in pairs else "total"
    trust_pair = "total" if "total" in pairs else "engine"
    target = data.log_prob if trust_pair == "total" else data.old_log_prob
    trust = trust_region_stats(target, data.rollout_log_prob, data.advantage, drpo_delta)
    trend = step_trend(getattr(data, PAIRS[main][0]), data.rollout_log_prob, data.step)
    return Analysis(label=data.label, tokens=data.num_tokens, sequences=data.num_sequences,
                    steps=len(np.unique(data.step)), fields=data.fields(), pairs=pairs, buckets=buckets,
                    trust=trust, trust_pair=trust_pair, main_pair=main, trend=trend, jumps=trend_jumps(trend),
                    engines=list(data.engines))


TREND_KEYS = ("abs_p_mean", "abs_p_p99", "abs_p_max", "ratio_outside_0.9_1.1", "kl_k3")


def step_trend(target: np.ndarray, anchor: np.ndarray, step: np.ndarray) -> list[dict[str, float]]:
    """Per step (ascending): tokens and the TREND_KEYS statistics."""
    steps, inverse = np.unique(step, return_inverse=True)
    rows = []
    for i, value in enumerate(steps):
        stats = pair_stats(target[inverse == i], anchor[inverse == i])
        rows.append({"step": int(value), "tokens": stats["tokens"], **{k: stats[k] for k in TREND_KEYS}})
    return rows


def first_steps(trend: list[dict[str, float]]) -> int:
    """How many steps make the baseline: the first quarter of the run, at least 1 and at most 5."""
    return max(1, min(5, len(trend) // 4))


def trend_baseline(trend: list[dict[str, float]], key: str = "abs_p_mean") -> float:
    return float(np.median([row[key] for row in trend[:first_steps(trend)]]))


def trend_jumps(trend: list[dict[str, float]], key: str = "abs_p_mean") -> list[int]:
    """Steps whose ``key`` jumped against the first steps: above JUMP_FACTOR x their median and JUMP_FLOOR more."""
    if len(trend) < 2:
        return []
    baseline = trend_baseline(trend, key)
    return [int(row["step"]) for row in trend[first_steps(trend):]
            if row[key] > JUMP_FACTOR * baseline and row[key] - baseline > JUMP_FLOOR]


STEP_METRIC_KEYS = ("abs_p_p99", "abs_p_p99.9", "ratio_outside_0.9_1.1", "abs_logp_gt_ln2", "abs_p_gt_0.05",
                    "abs_p_gt_0.15", "kl_k3")


@torch.no_grad()
def step_metrics(log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The trainer's per-step mismatch of the valid tokens of [B, T] tensors, pi (trainer) against mu (rollout).

    mismatch/abs_mean, max, min (of pi - mu) and kl (k1, the sampled-token estimate of KL(mu || pi) =
    E_mu[log mu - log pi]) in the tensors' own precision, as every run has logged them; then what the mean hides,
    from :func:`pair_stats` in float64: p99, p99.9 of |pi - mu|, the band shares and k3. A few thousand tokens a
    step: negligible next to a forward pass.
    """
    valid = mask.bool()
    if not valid.any():
        return {}
    shift = (log_prob.exp() - rollout_log_prob.exp())[valid]  # [N] pi - mu
    stats = pair_stats(log_prob[valid].double().cpu().numpy(), rollout_log_prob[valid].double().cpu().numpy())
    return {"mismatch/abs_mean": shift.abs().mean().item(), "mismatch/max": shift.max().item(),
            "mismatch/min": shift.min().item(), "mismatch/kl": (rollout_log_prob - log_prob)[valid].mean().item(),
            **{f"mismatch/{key}": stats[key] for key in STEP_METRIC_KEYS}}
