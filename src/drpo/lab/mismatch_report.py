"""The mismatch report: console tables, markdown (mismatch.md), figures (mismatch.png, mismatch_by_length.png,
mismatch_by_position.png) and every number in mismatch.json.

Every source (a file, a run, a rollout precision) is one column or row; every number comes from
:func:`drpo.mismatch.stats.analyse`, so the console, the markdown and the figure always agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from drpo.lab.mismatch_references import REFERENCES, sources
from drpo.mismatch.stats import (
    BANDS,
    JUMP_FACTOR,
    JUMP_FLOOR,
    PAIRS,
    PROFILE_TRUST,
    QUANTILES,
    TIS_TRUNCATED,
    TRUST_REGIONS,
    Analysis,
    trend_baseline,
)

SHARE_KEYS = frozenset(BANDS) | {"share", "abs_s_gt_ln2", "rare_share"}
STAT_ROWS = (  # (key, label) of the per-comparison tables
    *((f"abs_p_{q}", f"|Δp| {q}") for q in ("mean", *QUANTILES, "max")),
    *((f"abs_logp_{q}", f"|Δlog p| {q}") for q in ("mean", *QUANTILES, "max")),
    ("logp_mean", "mean of Δlog p"),
    ("logp_std", "sd of Δlog p"),
    ("p_diff_min", "min of Δp"),
    ("p_diff_max", "max of Δp"),
    *((key, f"share: {label}") for key, label in BANDS.items()),
    ("kl_k1", "KL(anchor || target), k1 estimate"),
    ("kl_k3", "KL(anchor || target), k3 estimate"),
)
SUMMARY_COLUMNS = (  # (key, header) of the one-line-per-source table: |pi - mu| unless the header says
    ("abs_p_mean", "mean"), ("abs_p_p99", "p99"), ("abs_p_p99.9", "p99.9"), ("abs_p_max", "max"),
    ("abs_p_gt_0.05", ">0.05"), ("abs_p_gt_0.15", ">0.15"), ("ratio_outside_0.9_1.1", "ratio out [0.9,1.1]"),
    ("kl_k3", "KL k3"),
)
SUMMARY_TITLE = "|pi - mu| of each source's main comparison (pi_old vs mu when the source has pi_old)"
LENGTH_COLUMNS = (  # (key, header) of the by-length tables: token-level, then sequence-level, then trust regions
    ("sequences", "sequences"), ("tokens", "tokens"), ("abs_p_mean", "mean |Δp|"), ("abs_p_p99", "p99 |Δp|"),
    ("abs_p_max", "max |Δp|"), ("logp_std", "sd log(pi/mu)"), ("kl_k3", "token k3"), ("abs_s_mean", "mean |s|"),
    ("abs_s_p99", "p99 |s|"), ("abs_s_max", "max |s|"), ("seq_k3", "seq k3"), ("abs_s_gt_ln2", "|s| > ln 2"),
    *PROFILE_TRUST,
)
POSITION_COLUMNS = (
    ("tokens", "tokens"), ("sequences", "sequences reaching it"), ("abs_p_mean", "mean |Δp|"),
    ("abs_p_p99", "p99 |Δp|"), ("abs_p_max", "max |Δp|"), ("logp_std", "sd log(pi/mu)"), ("kl_k3", "token k3"),
    ("rare_share", "mu < 0.1"), *PROFILE_TRUST,
)
TERMINAL_LENGTH_COLUMNS = ("sequences", "tokens", "abs_p_mean", "abs_p_p99", "kl_k3", "abs_s_mean", "abs_s_p99",
                           "seq_k3", "abs_s_gt_ln2")
LENGTH_TITLE = "by response length (main comparison): Δp = pi - mu per token; s = Σ log pi - log mu per response"
PROFILE_TEXT = (
    "Each source's main comparison: pi_old vs mu when it has pi_old (the engine mismatch), else pi vs mu; below, pi "
    "stands for whichever it is. Δp = pi - mu per token. Per response, s = the sum over its tokens of log pi - log "
    "mu, the log of the whole response's probability ratio. Token k3 = the mean over tokens of r - 1 - log r "
    "(r = pi / mu); sequence k3 = the mean over responses of exp(s) - 1 - s: both estimate KL(mu || pi) from the "
    "sampled tokens (per token and per whole response) and are >= 0. |s| > ln 2: the share of responses whose "
    "probability ratio is beyond 2x either way. sd log(pi/mu): the standard deviation over the bin's tokens of "
    "log pi - log mu, the spread of the ratio.")


def fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in SHARE_KEYS or key.startswith(("masked/", "truncated/", "drpo/w_gt", "drpo/w_lt")):
        return f"{100 * value:.2f}%"
    if key == "tokens":
        return f"{int(value):,}"
    return f"{value:.3g}"


def summary_rows(analyses: list[Analysis], extras: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary: one row per source, its main comparison (engine mismatch if present).

    ``extras``: also the sources' extra columns (the model mode's "rounds", long text).
    """
    extra = sorted({key for a in analyses for key in a.extra}) if extras else []
    header = ["source", "compares", "tokens", *(h for _, h in SUMMARY_COLUMNS), *extra]
    rows = []
    for a in analyses:
        stats = a.pairs[a.main_pair]
        rows.append([a.label, PAIRS[a.main_pair][2].split(": ")[1], fmt("tokens", a.tokens),
                     *(fmt(k, stats.get(k)) for k, _ in SUMMARY_COLUMNS), *(a.extra.get(k, "") for k in extra)])
    return header, rows


def _rich(title: str, header: list[str], rows: list[list[str]]):
    """A terminal table: the first two columns are names (left), the rest numbers (right)."""
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", style="bold cyan" if i == 0 else None,
                         no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def rich_table(analyses: list[Analysis]):
    return _rich(SUMMARY_TITLE, *summary_rows(analyses, extras=False))


def length_rows(analyses: list[Analysis]) -> tuple[list[str], list[list[str]]]:
    """The compact by-length table of the terminal: one row per source and response-length bin."""
    headers = dict(LENGTH_COLUMNS)
    header = ["source", "length", *(headers[key] for key in TERMINAL_LENGTH_COLUMNS)]
    rows = [[a.label, row["bin"], *(fmt(key, row.get(key)) for key in TERMINAL_LENGTH_COLUMNS)]
            for a in analyses for row in a.by_length]
    return header, rows


def rich_length_table(analyses: list[Analysis]):
    return _rich(LENGTH_TITLE, *length_rows(analyses))


def profile_trust_text(analyses: list[Analysis]) -> str:
    """The paragraph saying what the trust-region columns of the profiles count, DRPO's delta included."""
    deltas = " / ".join(f"{delta:g}" for delta in sorted({row["drpo/delta"] for a in analyses for row in a.by_length}))
    return ("The last four columns: the share of the bin's tokens each trust region acts on, computed by "
            "`drpo.losses` on the comparison above (pi_old against mu when the source has pi_old: the tokens before "
            f"any update) at its registered defaults: DRPO pull-back, gradient weight w < 0 at delta {deltas} "
            "(`--delta` sets it); DPPO mask and PPO clip, weight 0; TIS truncation, the importance weight pi/mu "
            "above ppo_tis's cap. DRPO, DPPO and PPO act only on a token that moved the way its advantage pushes: "
            "without advantages in the file each of their shares is the mean over A = +1 and A = -1. Weighted by "
            "the bins' token counts, the shares add up to the source's over all its tokens.")


def profile_section(analyses: list[Analysis], figure: str | None = "mismatch_by_length.png",
                    position_figure: str | None = "mismatch_by_position.png") -> list[str]:
    """Markdown: the by-length and by-position tables of every source, with what they compare."""
    lines = ["## By response length", "", PROFILE_TEXT, "", profile_trust_text(analyses), "",
             "Responses binned by their length in tokens; the token columns are over the tokens of those responses, "
             "the s columns over the responses.", ""]
    for a in analyses:
        lines += [f"**{a.label}** ({PAIRS[a.profile_pair][2]})", ""] if a.profile_pair else []
        lines += _md_table(["length", *(h for _, h in LENGTH_COLUMNS)],
                           [[row["bin"], *(fmt(key, row.get(key)) for key, _ in LENGTH_COLUMNS)]
                            for row in a.by_length])
    lines += ["## By position in the response", "",
              "Tokens binned by their position in the response (1: the first response token), whatever the response's "
              "length; Δp, k3 and the trust regions as above; mu < 0.1: the share of the bin's tokens the engine found "
              "unlikely (the rare-token tail, where ratios explode).", ""]
    for a in analyses:
        lines += [f"**{a.label}** ({PAIRS[a.profile_pair][2]})", ""] if a.profile_pair else []
        lines += _md_table(["position", *(h for _, h in POSITION_COLUMNS)],
                           [[row["bin"], *(fmt(key, row.get(key)) for key, _ in POSITION_COLUMNS)]
                            for row in a.by_position])
    if figure:
        lines += [f"![mismatch by length and position]({figure})", ""]
    if position_figure:
        lines += [f"![trust regions by position]({position_figure})", ""]
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"  # a bare | would end the cell

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows), ""]


def markdown(analyses: list[Analysis], command: str | None = None, figure: str | None = "mismatch.png",
             advice=None) -> str:
    """``advice``: recommend.Advice per source, or a sentence saying why there is none."""
    labels = [a.label for a in analyses]
    lines = ["# Training-inference mismatch", ""]
    if command:
        lines += ["Made by:", "", "```bash", command, "```", ""]
    lines += ["mu: the rollout engine's probability of each sampled token; pi_old: the trainer's, same weights "
              "(recomputed before the update); pi: the policy at its update. Quantiles are over tokens.", ""]
    lines += ["## Sources", ""]
    lines += _md_table(["source", "sequences", "tokens", "steps", "fields", "engine"],
                       [[a.label, f"{a.sequences:,}", f"{a.tokens:,}", str(a.steps), ", ".join(a.fields),
                         ", ".join(a.engines) or "-"] for a in analyses])
    lines += ["## Summary", "", SUMMARY_TITLE + ".", ""] + _md_table(*summary_rows(analyses))
    if figure:
        lines += [f"![mismatch]({figure})", ""]
    for pair, (_, _, title) in PAIRS.items():
        having = [a for a in analyses if pair in a.pairs]
        if not having:
            continue
        target, anchor = title.split(": ")[1].split(" vs ")
        lines += [f"## {title[0].upper() + title[1:]}", "",
                  f"Δ is {target} minus {anchor}, per token; the bands read pi as {target} and mu as {anchor}.", ""]
        lines += _md_table(["statistic", *(a.label for a in having)],
                           [[label, *(fmt(key, a.pairs[pair].get(key)) for a in having)] for key, label in STAT_ROWS])
    lines += ["## By token probability", "",
              "The main comparison of each source split by mu of the sampled token: a small absolute shift of a "
              "rare token is a large ratio.", ""]
    for a in analyses:
        lines += [f"**{a.label}** ({PAIRS[a.main_pair][2]})", ""]
        lines += _md_table(["mu in", "share of tokens", "mean |pi-mu|", "max |pi-mu|", "ratio out [0.9,1.1]",
                            "|pi-mu| > 0.05"],
                           [[f"[{b['low']:g}, {b['high']:g}{']' if b['high'] == 1.0 else ')'}", fmt("share", b["share"]),
                             fmt("", b.get("abs_p_mean")), fmt("", b.get("abs_p_max")),
                             fmt("ratio_outside_0.9_1.1", b.get("ratio_outside_0.9_1.1")),
                             fmt("abs_p_gt_0.05", b.get("abs_p_gt_0.05"))] for b in a.buckets[a.main_pair]])
    if any(a.by_length for a in analyses):
        lines += profile_section(analyses, figure and "mismatch_by_length.png", figure and "mismatch_by_position.png")
    deltas = " / ".join(f"{delta:g}" for delta in sorted({a.trust["drpo/delta"] for a in analyses}))
    drpo = f"DRPO (delta {deltas})"
    lines += ["## What each trust region does with these tokens", "",
              "Computed by `drpo.losses` on the tokens as they are (pi, or pi_old when the file has no pi, against "
              f"mu): the share of tokens whose gradient weight is 0, DRPO's weight at delta {deltas} (`--delta` "
              "sets it), and the share whose importance weight pi/mu ppo_tis truncates. Without advantages in the "
              "file, each share is the mean over A = +1 and A = -1.", ""]
    trust_rows = [[f"masked by {label}", *(fmt(f"masked/{label}", a.trust[f"masked/{label}"]) for a in analyses)]
                  for label, _, _ in TRUST_REGIONS]
    trust_rows.append([dict(PROFILE_TRUST)[TIS_TRUNCATED], *(fmt(TIS_TRUNCATED, a.trust[TIS_TRUNCATED])
                                                             for a in analyses)])
    trust_rows += [[f"{drpo}: share w > 1", *(fmt("drpo/w_gt_1", a.trust["drpo/w_gt_1"]) for a in analyses)],
                   [f"{drpo}: share w < 0", *(fmt("drpo/w_lt_0", a.trust["drpo/w_lt_0"]) for a in analyses)],
                   [f"{drpo}: w min / max",
                    *(f"{a.trust['drpo/w_min']:.3g} / {a.trust['drpo/w_max']:.3g}" for a in analyses)]]
    lines += _md_table(["", *labels], trust_rows)
    lines += ["## Trend over steps", "",
              f"Mean |pi - mu| of the main comparison per step; a step is flagged when it exceeds {JUMP_FACTOR:g} x "
              f"the median of the first steps (the first quarter, 1 to 5 steps) and by more than {JUMP_FLOOR:g}.", ""]
    trend_rows = []
    for a in analyses:
        values = [row["abs_p_mean"] for row in a.trend]
        flagged = ", ".join(map(str, a.jumps[:10])) + (" ..." if len(a.jumps) > 10 else "")
        trend_rows.append([a.label, str(len(values)), fmt("", trend_baseline(a.trend)), fmt("", values[-1]),
                           fmt("", max(values)), flagged or "none"])
    lines += _md_table(["source", "steps", "first steps", "last step", "max", "flagged steps"], trend_rows)
    if isinstance(advice, str):
        lines += ["## Which delta for this mismatch?", "", advice, ""]
    elif advice:
        lines += advice_section(advice)
    lines += reference_section(analyses)
    return "\n".join(lines)


def advice_rows(advice) -> tuple[list[str], list[list[str]]]:
    """What each trust region does with each source's tokens at the delta recommended for it (recommend.Advice)."""
    header = ["", *(f"{a.label} (delta {a.recommendation.delta:g})" for a in advice)]
    keys = [key for key in advice[0].trust if key.startswith("masked/")] if advice else []
    rows = [[f"masked by {key.removeprefix('masked/')}",
             *(fmt(key, a.trust.get(key)) if key in a.trust else "-" for a in advice)] for key in keys]
    rows += [["DRPO: share w > 1", *(fmt("drpo/w_gt_1", a.trust["drpo/w_gt_1"]) for a in advice)],
             ["DRPO: share w < 0", *(fmt("drpo/w_lt_0", a.trust["drpo/w_lt_0"]) for a in advice)],
             ["DRPO: w min / max", *(f"{a.trust['drpo/w_min']:.3g} / {a.trust['drpo/w_max']:.3g}" for a in advice)]]
    return header, rows


def advice_section(advice) -> list[str]:
    lines = ["## Which delta for this mismatch?", "",
             "From each source's p99 |pi - mu| (its main comparison), the delta this project's delta sweep supports "
             "at the nearest mismatch it measured, with the evidence it rests on.", ""]
    for a in advice:
        lines += [f"**{a.label}**: " + " ".join(a.recommendation.lines()), ""]
    lines += ["What each trust region does with these tokens at the recommended delta (DPPO Binary-TV at that "
              "boundary beside the fixed ones):", ""]
    return lines + _md_table(*advice_rows(advice))


def reference_section(analyses: list[Analysis]) -> list[str]:
    lines = ["## Published figures", "",
             "Mismatch figures other engines' users published, exactly as published, next to the same statistic "
             "of each source's main comparison (the engine's log-probs against the trainer's). Different models, "
             "engines and lengths: a place to stand, not a pass mark.", ""]
    number = {citation: i for i, (citation, _) in enumerate(sources(), start=1)}
    rows = [[ref.model, ref.engines, ref.precision, ref.metric, ref.published,
             *(fmt(ref.stat, a.pairs[a.main_pair].get(ref.stat)) if ref.stat else "-" for a in analyses),
             f"[{number[ref.source]}]"] for ref in REFERENCES]
    lines += _md_table(["model", "engines", "precision", "statistic", "published", *(a.label for a in analyses),
                        "source"], rows)
    lines += [f"[{i}] {citation}: <{url}>" for i, (citation, url) in enumerate(sources(), start=1)]
    return [*lines, ""]


def plot(analyses: list[Analysis], path: str | Path) -> Path:
    """Four panels: tail of |pi - mu|, ratio band by token probability, trend over steps, trust-region masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from drpo.plots import save_figure

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (tail, bucket, trend, trust) = axes.ravel()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, a in enumerate(analyses):
        color = colors[i % len(colors)]
        s = a.pairs[a.main_pair]
        quantile_keys = ["abs_p_p50", "abs_p_p90", "abs_p_p95", "abs_p_p99", "abs_p_p99.9", "abs_p_max"]
        tail.plot(range(len(quantile_keys)), [max(s[k], 1e-12) for k in quantile_keys], "o-", color=color,
                  label=a.label)
        rows = a.buckets[a.main_pair]
        width = 0.8 / len(analyses)
        bucket.bar(np.arange(len(rows)) + i * width, [100 * (r.get("ratio_outside_0.9_1.1") or 0) for r in rows],
                   width, color=color, label=a.label)
        trend.plot([r["step"] for r in a.trend], [r["abs_p_mean"] for r in a.trend], "o-", ms=3, color=color,
                   label=a.label)
        for step in a.jumps:
            trend.axvline(step, color=color, alpha=0.15)
        keys = [f"masked/{label}" for label, _, _ in TRUST_REGIONS] + ["drpo/w_lt_0"]
        trust.bar(np.arange(len(keys)) + i * width, [100 * a.trust[k] for k in keys], width, color=color,
                  label=a.label)
    tail.set(xticks=range(6), xticklabels=["p50", "p90", "p95", "p99", "p99.9", "max"], yscale="log",
             ylabel="|pi - mu|", title="Tail of |pi - mu| (main comparison)")
    tail.axhline(0.15, color="grey", ls="--", lw=0.8)
    edges = [f"{lo:g}-{hi:g}" for lo, hi in zip((0, 1e-3, 1e-2, 0.1, 0.5, 0.9), (1e-3, 1e-2, 0.1, 0.5, 0.9, 1),
                                                 strict=True)]
    bucket.set(xticks=np.arange(len(edges)) + 0.4 - 0.4 / len(analyses), xticklabels=edges, xlabel="mu of the token",
               ylabel="% tokens", title="Ratio pi/mu outside [0.9, 1.1], by token probability")
    trend.set(xlabel="step", ylabel="mean |pi - mu|", title="Trend over steps (flagged steps shaded)")
    labels = [label for label, _, _ in TRUST_REGIONS] + ["DRPO w<0"]
    trust.set(xticks=np.arange(len(labels)) + 0.4 - 0.4 / len(analyses), ylabel="% tokens",
              title="Masked (w = 0) by each trust region; DRPO corrective (w < 0)")
    trust.set_xticklabels(labels, rotation=15, fontsize=8)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_profiles(analyses: list[Analysis], path: str | Path) -> Path:
    """Two panels: mean (solid) and p99 (dashed) |pi - mu| against the response-length bin and against the
    position bin, one colour per source, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drpo.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, attribute, xlabel in ((axes[0], "by_length", "response length (tokens)"),
                                  (axes[1], "by_position", "position in the response (1: first token)")):
        bins = _union_bins([getattr(a, attribute) for a in analyses])
        where = {label: i for i, label in enumerate(bins)}
        for i, a in enumerate(analyses):
            rows = getattr(a, attribute)
            x = [where[row["bin"]] for row in rows]
            color = colors[i % len(colors)]
            ax.plot(x, [max(row["abs_p_mean"], 1e-12) for row in rows], "o-", color=color, label=a.label)
            ax.plot(x, [max(row["abs_p_p99"], 1e-12) for row in rows], "s--", color=color, alpha=0.7)
        ax.plot([], [], "o-", color="grey", label="mean")  # the line styles, once
        ax.plot([], [], "s--", color="grey", label="p99")
        ax.set(xticks=range(len(bins)), xticklabels=bins, yscale="log", xlabel=xlabel, ylabel="|pi - mu|")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("|pi - mu| by response length (main comparison)")
    axes[1].set_title("|pi - mu| by token position")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_trust_by_position(analyses: list[Analysis], path: str | Path) -> Path:
    """One panel per source: the share of tokens each trust region of PROFILE_TRUST acts on (one line each)
    against the position bin, a shared y axis (symlog: a share of 0 stays on the plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drpo.plots import save_figure

    columns = min(len(analyses), 3)
    rows = -(-len(analyses) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), sharey=True, squeeze=False)
    bins = _union_bins([a.by_position for a in analyses])
    where = {label: i for i, label in enumerate(bins)}
    for ax, a in zip(axes.ravel(), analyses, strict=False):
        x = [where[row["bin"]] for row in a.by_position]
        for key, name in PROFILE_TRUST:
            ax.plot(x, [100 * row[key] for row in a.by_position], "o-", label=name)
        ax.set(xticks=range(len(bins)), xticklabels=bins, xlabel="position in the response",
               title=f"{a.label} ({PAIRS[a.profile_pair][2].split(': ')[1]})")
        ax.set_yscale("symlog", linthresh=0.01)  # linear below 0.01%: rare shares are visible, 0 is a floor
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("% tokens")
    axes[0, 0].legend(fontsize=7)  # the same colours in every panel
    for ax in axes.ravel()[len(analyses):]:
        ax.set_visible(False)
    fig.suptitle("Share of tokens each trust region acts on, by token position (before any update, against mu)")
    fig.tight_layout()
    return save_figure(fig, path)


def _union_bins(profiles: list[list[dict]]) -> list[str]:
    """The bin labels of every source, in the order of their lower ends."""
    low = {row["bin"]: row["low"] for rows in profiles for row in rows}
    return sorted(low, key=low.__getitem__)


def write_report(analyses: list[Analysis], out_dir: str | Path, command: str | None = None, advice=None) -> Path:
    """OUT/mismatch.md, OUT/mismatch.png, OUT/mismatch_by_length.png, OUT/mismatch_by_position.png and
    OUT/mismatch.json (every statistic); returns the markdown's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(analyses, out / "mismatch.png")
    if any(a.by_length for a in analyses):
        plot_profiles(analyses, out / "mismatch_by_length.png")
        plot_trust_by_position(analyses, out / "mismatch_by_position.png")
    # JSON has no NaN: a statistic with no tokens behind it (an empty bucket) is null
    payload = {"command": command, "sources": [asdict(a) for a in analyses]}
    (out / "mismatch.json").write_text(json.dumps(_finite(payload), indent=1))
    path = out / "mismatch.md"
    path.write_text(markdown(analyses, command, advice=advice))
    return path


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
