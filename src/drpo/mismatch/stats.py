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

Does the mismatch grow with the response? Per sequence, s = sum over its tokens of log pi_old - log mu (the log of
the whole response's probability ratio; log pi - log mu without pi_old): :func:`sequence_stats` of |s| and the
sequence-level k3 = mean(exp(s) - 1 - s), the KL estimate of whole responses; :func:`length_profile` bins
sequences by response length, :func:`position_profile` bins tokens by their position in the response. Each bin
also carries the ratio's spread (the sd of log pi_old - log mu) and :func:`trust_region_stats` of its tokens alone,
so the bins' shares, weighted by their token counts, add up to the whole source's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from drpo.losses import get_loss
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


def _ppo_label(name: str) -> str:
    """'ppo_clip 0.2' (eps_low = eps_high) or 'ppo_clip 0.2/0.28': the clip widths registered under ``name``."""
    h = get_loss(name).hyper
    return f"ppo_clip {h.eps_low:g}" + ("" if h.eps_high == h.eps_low else f"/{h.eps_high:g}")


# the labels carry the registered defaults, so a changed default renames the column instead of hiding behind it
PPO_CLIP_HIGHER = _ppo_label("ppo_clip_higher")
DPPO_TV = f"dppo_binary_tv {get_loss('dppo_binary_tv').hyper.delta_high:g}"
# (label, registry name, hyper-parameters): the trust regions whose masks the report applies
TRUST_REGIONS = (
    (_ppo_label("ppo_clip"), "ppo_clip", {}),
    (PPO_CLIP_HIGHER, "ppo_clip_higher", {}),
    (DPPO_TV, "dppo_binary_tv", {}),
    (f"dppo_binary_kl {get_loss('dppo_binary_kl').hyper.delta:g}", "dppo_binary_kl", {}),
)
TIS_CAP = get_loss("ppo_tis").hyper.is_high  # ppo_tis clamps the importance weight pi_old / mu to at most this
TIS_TRUNCATED = f"truncated/ppo_tis {TIS_CAP:g}"
# (trust_region_stats key, name with its setting): the share of tokens each trust region acts on, shown per length
# and position bin
PROFILE_TRUST = (
    ("drpo/w_lt_0", "DRPO pull-back (w < 0)"),
    (f"masked/{DPPO_TV}", f"DPPO mask ({DPPO_TV})"),
    (f"masked/{PPO_CLIP_HIGHER}", f"PPO clip ({PPO_CLIP_HIGHER})"),
    (TIS_TRUNCATED, f"TIS truncation (pi/mu > {TIS_CAP:g})"),
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
    """What each trust region does with these tokens, computed by drpo.losses on them; every share is a mean over
    the tokens, so the shares of a partition of the tokens, weighted by their token counts, add up to these.

    ``masked/<label>``: the share of tokens whose gradient weight is 0; ``drpo/...``: DRPO's weight at
    ``drpo_delta`` (default: the loss's default), its share above 1, share below 0 (corrective), min, max, and
    ``drpo/delta`` the delta used; ``tv_delta`` adds DPPO Binary-TV at that boundary. The masks depend on the advantage's
    sign (a token is dropped only when it moved the way its advantage pushes); without advantages each
    figure is the mean over A = +1 and A = -1, i.e. advantages of random sign. ``truncated/ppo_tis <C>``: the share
    whose importance weight exp(log_prob - rollout_log_prob) exceeds ppo_tis's cap C, whatever the advantage: TIS's
    pi_old / mu when ``log_prob`` is pi_old.
    """
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
    out[TIS_TRUNCATED] = (pi - mu).exp().gt(TIS_CAP).double().mean().item()
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
    profile_pair: str = ""  # the pair of sequence, by_length and by_position (the main pair)
    sequence: dict[str, float] = field(default_factory=dict)  # sequence_stats of every response
    by_length: list[dict] = field(default_factory=list)  # length_profile
    by_position: list[dict] = field(default_factory=list)  # position_profile


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
    log_ratio = getattr(data, PAIRS[main][0]) - data.rollout_log_prob
    return Analysis(label=data.label, tokens=data.num_tokens, sequences=data.num_sequences,
                    steps=len(np.unique(data.step)), fields=data.fields(), pairs=pairs, buckets=buckets,
                    trust=trust, trust_pair=trust_pair, main_pair=main, trend=trend, jumps=trend_jumps(trend),
                    engines=list(data.engines), profile_pair=main,
                    sequence=sequence_stats(sequence_log_ratios(log_ratio, data.seq_index, data.num_sequences)),
                    by_length=length_profile(data, drpo_delta=drpo_delta),
                    by_position=position_profile(data, drpo_delta=drpo_delta))


# ------------------------------------------------------------------ by response length and by position
LENGTH_EDGES = (1, 9, 33, 129, 513)  # lower ends of the bins 1-8, 9-32, 33-128, 129-512, 513+ (tokens)
POSITION_EDGES = LENGTH_EDGES  # positions count from 1: bin 1-8 holds the first eight tokens of each response
PROFILE_TOKEN_KEYS = ("abs_p_mean", "abs_p_p99", "abs_p_max", "logp_std", "kl_k3")  # token-level, per bin
RARE_MU = 0.1  # position_profile's rare-token tail: the share of tokens with mu below this


def profile_pair(data: TokenLogProbs) -> str:
    """The pair the length and position profiles compare: "engine" (pi_old vs mu) when the source has pi_old, else
    "total" (pi vs mu), as :func:`analyse` picks its main pair."""
    return "engine" if data.old_log_prob is not None else "total"


def check_edges(edges) -> tuple[int, ...]:
    """Bin edges: strictly increasing integer lower ends, the first 1 (every length and position is >= 1)."""
    edges = tuple(int(e) for e in edges)
    if not edges or edges[0] != 1 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise ValueError(f"bin edges must be increasing integers starting at 1 (lower ends: 1, 9, 33 gives 1-8, "
                         f"9-32, 33+); got {list(edges)}")
    return edges


def bin_labels(edges) -> list[str]:
    """'1-8', '9-32', ..., '513+' (a bin of one value: '7')."""
    edges = check_edges(edges)
    highs = [b - 1 for b in edges[1:]]
    return [(f"{lo}" if hi == lo else f"{lo}-{hi}") for lo, hi in zip(edges[:-1], highs, strict=True)] + [f"{edges[-1]}+"]


def token_positions(seq_index: np.ndarray) -> np.ndarray:
    """Position of each token in its response, from 1 (the first response token). Tokens of a sequence are
    stored in order (drpo.mismatch.format.from_records); they need not be contiguous.

    >>> token_positions(np.array([0, 0, 0, 1, 2, 2])).tolist()
    [1, 2, 3, 1, 1, 2]
    """
    seq_index = np.asarray(seq_index)
    n = len(seq_index)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(seq_index, kind="stable")  # stable: a sequence's tokens keep their order
    starts = np.flatnonzero(np.r_[True, np.diff(seq_index[order]) != 0])  # [S'] first sorted token of each sequence
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))  # [N] per sorted token
    positions = np.empty(n, dtype=np.int64)
    positions[order] = np.arange(n) - run_start + 1
    return positions


def sequence_log_ratios(log_ratio: np.ndarray, seq_index: np.ndarray, num_sequences: int | None = None) -> np.ndarray:
    """s per sequence [S]: the sum over its tokens of log target - log anchor (log pi_old(y) - log mu(y))."""
    return np.bincount(np.asarray(seq_index), weights=np.asarray(log_ratio, np.float64),
                       minlength=num_sequences or 0)


def sequence_stats(s: np.ndarray) -> dict[str, float]:
    """Statistics of sequence log-ratios s: mean, p99 and max of |s|, the share with |s| > ln 2 (the response's
    probability ratio beyond 2x either way), the mean of s, and ``seq_k3`` = mean(exp(s) - 1 - s): the k3
    estimate of KL(mu || pi) over whole responses (each term >= 0).

    >>> st = sequence_stats(np.array([0.0, math.log(3)]))
    >>> round(st["seq_k3"], 4), st["abs_s_gt_ln2"]
    (0.4507, 0.5)
    """
    s = np.asarray(s, np.float64)
    if len(s) == 0:
        return {"sequences": 0}
    abs_s = np.abs(s)
    with np.errstate(over="ignore"):  # a huge s is an infinite k3, honestly
        k3 = np.maximum(np.expm1(s) - s, 0.0)  # >= 0 exactly; the clamp only undoes rounding at |s| ~ 1e-16
    return {"sequences": len(s), "abs_s_mean": float(abs_s.mean()), "abs_s_p99": float(np.quantile(abs_s, 0.99)),
            "abs_s_max": float(abs_s.max()), "s_mean": float(s.mean()), "seq_k3": float(k3.mean()),
            "abs_s_gt_ln2": float(np.mean(abs_s > math.log(2)))}


def _bin_of(values: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Index of each value's bin (-1 below the first edge)."""
    return np.searchsorted(np.asarray(edges), values, side="right") - 1


def _profile_arrays(data: TokenLogProbs, pair: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    pair = pair or profile_pair(data)
    target, anchor = (getattr(data, name) for name in PAIRS[pair][:2])
    if target is None or anchor is None:
        raise ValueError(f"source {data.label!r} has no {PAIRS[pair][2]}")
    return pair, np.asarray(target, np.float64), np.asarray(anchor, np.float64)


def _bin_row(edges: tuple[int, ...], labels: list[str], i: int) -> dict:
    return {"bin": labels[i], "low": edges[i], "high": edges[i + 1] - 1 if i + 1 < len(edges) else None}


def _token_columns(target: np.ndarray, anchor: np.ndarray, advantage: np.ndarray | None, tokens: np.ndarray,
                   drpo_delta: float | None) -> dict[str, float]:
    """The PROFILE_TOKEN_KEYS of ``pair_stats`` and every :func:`trust_region_stats` number of the ``tokens`` (a
    boolean mask) alone: the trust regions see target as pi before any update."""
    stats = pair_stats(target[tokens], anchor[tokens])
    trust = trust_region_stats(target[tokens], anchor[tokens], None if advantage is None else advantage[tokens],
                               drpo_delta)
    return {**{key: stats[key] for key in PROFILE_TOKEN_KEYS}, **trust}


def length_profile(data: TokenLogProbs, edges=LENGTH_EDGES, pair: str | None = None,
                   drpo_delta: float | None = None) -> list[dict]:
    """Sequences binned by response length (tokens; ``edges``: lower ends, see :func:`check_edges`), empty bins
    left out. Per bin: sequences, tokens, the token-level mean / p99 / max |pi - mu|, sd of log pi - log mu, mean
    k3 and the :func:`trust_region_stats` (DRPO at ``drpo_delta``) of its tokens, and the :func:`sequence_stats` of
    its sequences, for ``pair`` (default :func:`profile_pair`)."""
    edges = check_edges(edges)
    labels = bin_labels(edges)
    _, target, anchor = _profile_arrays(data, pair)
    lengths = np.bincount(data.seq_index, minlength=data.num_sequences)  # [S]
    s = sequence_log_ratios(target - anchor, data.seq_index, data.num_sequences)  # [S]
    seq_bin = _bin_of(lengths, edges)  # [S]
    token_bin = seq_bin[data.seq_index]  # [N]
    rows = []
    for i in range(len(edges)):
        sequences, tokens = seq_bin == i, token_bin == i
        if not sequences.any():
            continue
        rows.append({**_bin_row(edges, labels, i), "sequences": int(sequences.sum()), "tokens": int(tokens.sum()),
                     **_token_columns(target, anchor, data.advantage, tokens, drpo_delta),
                     **{k: v for k, v in sequence_stats(s[sequences]).items() if k != "sequences"}})
    return rows


def position_profile(data: TokenLogProbs, edges=POSITION_EDGES, pair: str | None = None,
                     drpo_delta: float | None = None) -> list[dict]:
    """Tokens binned by their position in the response (from 1; ``edges`` as :func:`length_profile`'s), empty
    bins left out. Per bin: tokens, the sequences reaching it, mean / p99 / max |pi - mu|, sd of log pi - log mu,
    mean k3, the :func:`trust_region_stats` (DRPO at ``drpo_delta``) of its tokens, and ``rare_share``, the share of
    its tokens with mu < RARE_MU."""
    edges = check_edges(edges)
    labels = bin_labels(edges)
    _, target, anchor = _profile_arrays(data, pair)
    token_bin = _bin_of(token_positions(data.seq_index), edges)  # [N]
    mu = np.exp(anchor)
    rows = []
    for i in range(len(edges)):
        tokens = token_bin == i
        if not tokens.any():
            continue
        rows.append({**_bin_row(edges, labels, i), "sequences": len(np.unique(data.seq_index[tokens])),
                     "tokens": int(tokens.sum()), **_token_columns(target, anchor, data.advantage, tokens, drpo_delta),
                     "rare_share": float(np.mean(mu[tokens] < RARE_MU))})
    return rows


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
