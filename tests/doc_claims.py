"""The numbers README.md and docs/ quote from a results directory, rendered from the results files.

Tables are rendered whole from results.json (``TABLES``: document -> renderers); single figures in prose
are claims (``CLAIMS``: document, text with {} fields, results file, the keys that fill them). tests/test_docs.py
checks that each rendered table and claim appears verbatim in its document, so a number that drifts from its
file fails a test. `python tests/doc_claims.py` prints the tables, to paste after a sweep is republished.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from drpo.lab.archive import RunArchive

ROOT = Path(__file__).resolve().parents[1]
SWEPT = (0.05, 0.1, 0.15, 0.3, 0.5, 1, 12.5)  # the delta sweep's values, in the table's order
DRPO_LABELS = {0.05: "drpo:delta=0.05", 0.1: "drpo:delta=0.1", 0.15: "drpo:delta=0.15", 0.3: "drpo:delta=0.3",
               0.5: "drpo", 1: "drpo:delta=1", 12.5: "drpo_reference"}
TV_LABELS = {d: f"dppo_binary_tv:delta_low={d:g},delta_high={d:g}" for d in (0.05, 0.1, 0.3, 0.5, 1)} | {
    0.15: "dppo_binary_tv"}


@cache
def results(sweep: str) -> dict:
    return json.loads((ROOT / "docs" / "results" / sweep / "results.json").read_text())


def get(data: dict, key: str):
    """'conditions.fp8.methods.drpo.late.mean' -> the value (labels may hold dots: try the longest key first)."""
    parts = key.split(".")
    while parts:
        if isinstance(data, list):
            data, parts = data[int(parts[0])], parts[1:]
            continue
        for n in range(len(parts), 0, -1):
            head = ".".join(parts[:n])
            if isinstance(data, dict) and head in data:
                data, parts = data[head], parts[n:]
                break
        else:
            raise KeyError(key)
    return data


def diff(d: dict | None) -> str:
    """A paired difference as the documents write it: '+0.050 [+0.009, +0.092]'."""
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _mismatch(value: float) -> str:
    return f"{value:.3f}" if value >= 0.01 else f"{value:.1e}"


def _versus(m: dict, outcome: str) -> str:
    """'better' / 'worse' when the paired interval of ``outcome`` against the baseline excludes 0, else ''."""
    d = m["vs_baseline" if outcome == "late" else f"{outcome}_vs_baseline"]
    return "" if d is None or d["verdict"] == "not separable" else f" {d['verdict']}{_holm_mark(d)}"


def _holm_mark(d: dict) -> str:
    """'†' on a late-accuracy separation that survives Holm's correction for its condition's family."""
    return "†" if d.get("p_holm") is not None and d["p_holm"] < 0.05 else ""


def _collapsed(m: dict) -> str:
    return f" ({m['collapsed']}/{m['seeds']} C)" if m["collapsed"] else ""


# ----------------------------------------------------------------------------- README.md
def readme_delta_table() -> str:
    """DRPO's and DPPO-TV's late accuracy per delta, against DRPO at 0.5 (the delta sweep's baseline)."""
    r = results("delta")
    lines = ["| delta | " + " | ".join(f"{d:g}" for d in SWEPT) + " |", "|---" * (len(SWEPT) + 1) + "|"]
    rows = [("DRPO, fp8", "fp8", DRPO_LABELS, "late"), ("DRPO, stale_strong", "stale_strong", DRPO_LABELS, "late"),
            ("DPPO-TV, fp8", "fp8", TV_LABELS, "late"), ("DPPO-TV, stale_strong", "stale_strong", TV_LABELS, "late"),
            ("DRPO, fp8, final evaluation alone", "fp8", DRPO_LABELS, "final"),
            ("DRPO, stale_strong, final evaluation alone", "stale_strong", DRPO_LABELS, "final")]
    for name, condition, labels, outcome in rows:
        cells = []
        for d in SWEPT:
            if d not in labels:
                cells.append("-")
                continue
            m = r["conditions"][condition]["methods"][labels[d]]
            cell = f"{m[outcome]['mean']:.3f}" + ("" if labels[d] == r["baseline"] else _versus(m, outcome))
            cells.append(cell + _collapsed(m))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_offpolicy_table() -> str:
    """Per condition: the mismatch, DRPO (0.5)'s late (and final) accuracy, the highest late mean, who is separably
    behind or ahead of DRPO on late accuracy, the collapses."""
    r = results("offpolicy")
    base = r["baseline"]
    lines = ["| condition | mean abs(pi-mu) | DRPO (0.5): late (final) | highest late mean | separably behind DRPO "
             "| separably ahead of DRPO | collapsed (seeds of 5) |", "|---|---|---|---|---|---|---|"]
    for condition, cond in r["conditions"].items():
        methods = cond["methods"]
        drpo = methods[base]
        leader = max(methods, key=lambda label: methods[label]["late"]["mean"])
        behind = [label + _holm_mark(m["vs_baseline"]) for label, m in methods.items()
                  if m["vs_baseline"] and m["vs_baseline"]["verdict"] == "worse"]
        ahead = [label + _holm_mark(m["vs_baseline"]) for label, m in methods.items()
                 if m["vs_baseline"] and m["vs_baseline"]["verdict"] == "better"]
        collapsed = sorted(((m["collapsed"], label) for label, m in methods.items() if m["collapsed"]), reverse=True)
        lines.append(f"| {condition} | {_mismatch(cond['mismatch']['abs_mean'])} "
                     f"| {drpo['late']['mean']:.3f} ({drpo['final']['mean']:.3f}) "
                     f"| {leader} {methods[leader]['late']['mean']:.3f} "
                     f"| {f'{len(behind)} of {len(methods) - 1}: ' + ', '.join(behind) if behind else 'none'} "
                     f"| {', '.join(ahead) or 'none'} "
                     f"| {', '.join(f'{label} {n}' for n, label in collapsed) or 'none'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docs/results/README.md
def results_delta_table(outcome: str) -> str:
    """Per delta: DRPO and DPPO-TV under both conditions, ``outcome`` (late or final) with the paired difference
    to the baseline (DRPO at 0.5) where its interval excludes 0."""
    r = results("delta")
    lines = ["| delta | DRPO, fp8 | DRPO, stale_strong | DPPO-TV, fp8 | DPPO-TV, stale_strong |", "|---|---|---|---|---|"]
    key = "vs_baseline" if outcome == "late" else f"{outcome}_vs_baseline"
    for d in SWEPT:
        cells = []
        for labels, condition in ((DRPO_LABELS, "fp8"), (DRPO_LABELS, "stale_strong"), (TV_LABELS, "fp8"),
                                  (TV_LABELS, "stale_strong")):
            if d not in labels:
                cells.append("-")
                continue
            m = r["conditions"][condition]["methods"][labels[d]]
            cell = f"{m[outcome]['mean']:.3f}"
            if m[key] is not None and m[key]["verdict"] != "not separable":
                cell += f" ({diff(m[key])}{_holm_mark(m[key])})"
            cells.append(cell + (f", {m['collapsed']}/{m['seeds']} C" if m["collapsed"] else ""))
        lines.append(f"| {d:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_offpolicy_table(outcome: str) -> str:
    """Per method and condition: ``outcome`` mean ± std, the paired difference to DRPO (0.5) where it separates,
    collapsed seeds."""
    r = results("offpolicy")
    conditions = list(r["conditions"])
    key = "vs_baseline" if outcome == "late" else f"{outcome}_vs_baseline"
    lines = ["| method | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for label in r["methods"]:
        cells = []
        for condition in conditions:
            m = r["conditions"][condition]["methods"][label]
            cell = f"{m[outcome]['mean']:.3f} ± {m[outcome]['std']:.3f}"
            if m[key] is not None and m[key]["verdict"] != "not separable":
                cell += f" ({diff(m[key])}{_holm_mark(m[key])})"
            cells.append(cell + (f", {m['collapsed']}/{m['seeds']} C" if m["collapsed"] else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mechanism_table() -> str:
    """Why DRPO at 0.15 learned slower: per (method, condition) of the delta sweep, the weight's statistics
    averaged over steps, the pull's gradient share and late accuracy."""
    r = results("delta")
    lines = ["| method | condition | w > 1 % | w < 0 % | masked % | mean abs(w-1) | w min / max | pull / pg | late |",
             "|---|---|---|---|---|---|---|---|---|"]
    for condition in ("fp8", "stale_strong"):
        for label in ("drpo:delta=0.05", "drpo:delta=0.15", "drpo_clipped:delta=0.15", "drpo:delta=0.3", "drpo",
                      "dppo_binary_tv"):
            m = r["conditions"][condition]["methods"][label]
            lines.append(f"| {label} | {condition} | {100 * m['amplified_frac']['mean']:.1f} "
                         f"| {100 * m['corrective_frac']['mean']:.2f} | {100 * m['masked_frac']['mean']:.2f} "
                         f"| {m['weight_dev']['mean']:.3f} | {m['weight_min']['mean']:.2f} / {m['weight_max']['mean']:.2f} "
                         f"| {m['pull_to_pg']['mean']:.2f} | {m['late']['mean']:.3f} |")
    return "\n".join(lines)


def mismatch_table(sweep: str) -> str:
    """What each condition's non-collapsed runs measured at rollout time: mean and p99 of abs(pi - mu) (mean over
    runs of each run's mean over steps) and its max over runs and steps."""
    lines = ["| condition | mean abs(pi-mu) | p99 | max |", "|---|---|---|---|"]
    for condition, cond in results(sweep)["conditions"].items():
        mm = cond["mismatch"]
        lines.append(f"| {condition} | {_mismatch(mm['abs_mean'])} | {_mismatch(mm['p99'])} | {mm['max']:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docs/results/engines
def engines_table(directory: str) -> str:
    """Per rollout engine and mode (docs/results/DIRECTORY/mismatch.json): the engine mismatch per token and per
    response, and what the trust regions do with those tokens."""
    lines = ["| rollout | mean tokens | mean \\|Δp\\| | p99 \\|Δp\\| | max \\|Δp\\| | token k3 | mean \\|s\\| | p99 \\|s\\| | "
             "sequence k3 | \\|s\\| > ln 2 | PPO clip 0.2 masks | Binary-TV 0.15 masks | DRPO 0.3: w < 0 |",
             "|---|" + "---:|" * 12]
    data = json.loads((ROOT / "docs" / "results" / directory / "mismatch.json").read_text())
    for source in data["sources"]:
        pair, seq, trust = source["pairs"]["engine"], source["sequence"], source["trust"]
        lines.append(
            f"| {source['label']} | {source['tokens'] / source['sequences']:.1f} | {pair['abs_p_mean']:.3g} | "
            f"{pair['abs_p_p99']:.3g} | {pair['abs_p_max']:.3g} | {pair['kl_k3']:.3g} | {seq['abs_s_mean']:.3g} | "
            f"{seq['abs_s_p99']:.3g} | {seq['seq_k3']:.3g} | {100 * seq['abs_s_gt_ln2']:.1f}% | "
            f"{100 * trust['masked/ppo_clip 0.2']:.2f}% | {100 * trust['masked/dppo_binary_tv 0.15']:.2f}% | "
            f"{100 * trust['drpo/w_lt_0']:.2f}% |")
    return "\n".join(lines)


def tail_table(source: str = "llamacpp:q8_0") -> str:
    """The rare-token tail the paper's argument is about, per setting, for one rollout source: reply length, the
    share of sampled tokens with mu < 0.1 (token-weighted over the position bins), the mismatch per token and per
    response, and the share DRPO pulls back."""
    settings = (("arith, \"Answer with the number only\" (instruct model)", "engines/short"),
                ("arith, asked to explain (instruct model)", "engines/long"),
                ("chain, worked step by step (task fine-tune)", "long/mismatch"))
    lines = ["| task (SmolLM2-135M) | mean tokens | mu < 0.1 | mean \\|Δp\\| | mean \\|s\\| | DRPO 0.3: w < 0 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, directory in settings:
        data = json.loads((ROOT / "docs" / "results" / directory / "mismatch.json").read_text())
        s = next(x for x in data["sources"] if x["label"] == source)
        rare = sum(r["rare_share"] * r["tokens"] for r in s["by_position"]) / sum(r["tokens"] for r in s["by_position"])
        lines.append(f"| {name} | {s['tokens'] / s['sequences']:.1f} | {100 * rare:.1f}% | "
                     f"{s['pairs']['engine']['abs_p_mean']:.3g} | {s['sequence']['abs_s_mean']:.3g} | "
                     f"{100 * s['trust']['drpo/w_lt_0']:.2f}% |")
    return "\n".join(lines)


def engines_benchmark_table() -> str:
    """benchmarks/bench_engines.py's figures (docs/results/engines/benchmark.json) as docs/benchmarks.md shows them."""
    data = json.loads((ROOT / "docs" / "results" / "engines" / "benchmark.json").read_text())
    lengths = list(next(iter(data.values()))["sampling_tokens_per_s"])
    lines = ["| rollout | rollout s | response tokens | rollout tokens/s | sync s | update s | step s | "
             + " | ".join(f"sampling tokens/s, {n} tokens" for n in lengths) + " |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(lengths)]
    for name, r in data.items():
        lines.append(f"| {name} | {r['rollout_s']:.2f} | {r['response_tokens']:.0f} | "
                     f"{r['response_tokens'] / r['rollout_s']:.0f} | {r['sync_s']:.2f} | {r['update_s']:.2f} | "
                     f"{r['step_s']:.2f} | " + " | ".join(f"{r['sampling_tokens_per_s'][n]:.0f}" for n in lengths) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docs/results/adaptive
ADAPTIVE_RULES = [(q, m) for q in (0.99, 0.999) for m in (0.5, 2)]  # the protocol's grid: quantile x multiple
DESIGN, VALIDATION = ("stale_strong", "fp8"), ("stale", "fp8_stale")
FIXED = {0.15: "drpo:delta=0.15", 0.3: "drpo", 0.5: "drpo:delta=0.5"}  # the validation's fixed deltas


def adaptive_label(quantile: float, multiple: float) -> str:
    return (f"drpo:adaptive_delta.enabled=true,adaptive_delta.quantile={quantile:g},"
            f"adaptive_delta.multiple={multiple:g}")


def adaptive_scores() -> dict[tuple[float, float], float]:
    """Per rule: the mean over the design conditions of its seed-paired mean difference to DRPO at 0.3 (late)."""
    r = results("adaptive/design")
    return {rule: sum(r["conditions"][c]["methods"][adaptive_label(*rule)]["vs_baseline"]["mean"] for c in DESIGN)
            / len(DESIGN) for rule in ADAPTIVE_RULES}


def adaptive_selected() -> tuple[float, float]:
    """The protocol's choice: the highest score; a rule within 0.002 of it ties, and a tie goes to the smaller
    multiple (then the higher score)."""
    scores = adaptive_scores()
    tied = [rule for rule, score in scores.items() if score >= max(scores.values()) - 0.002]
    return min(tied, key=lambda rule: (rule[1], -scores[rule]))


@cache
def _archived(sweep: str) -> dict[str, bytes]:
    return RunArchive(ROOT / "docs" / "results" / sweep).archived()


@cache
def _run_archive(sweep_dir: Path) -> RunArchive:
    """One RunArchive per sweep, so that its archive is decompressed once (seconds each time), not per key."""
    return RunArchive(sweep_dir)


def delta_set(sweep: str, condition: str, label: str) -> float | None:
    """The delta a method ran at (loss/delta), mean over its finished runs' steps, read from the sweep's archive."""
    slug = label.replace(":", "_").replace(",", "_")
    values = []
    for name, data in _archived(sweep).items():
        if name.startswith(f"runs/{condition}/{slug}/seed") and name.endswith("/metrics.jsonl"):
            values += [r["loss/delta"] for r in map(json.loads, data.decode().splitlines()) if "loss/delta" in r]
    return sum(values) / len(values) if values else None


def _verdict(d: dict) -> str:
    return f"{diff(d)} {d['verdict']}" if d["low"] is not None else f"{d['mean']:+.3f} ({d['n']} seed)"


def adaptive_design_table() -> str:
    """Per rule and design condition: late accuracy, the paired difference to DRPO at 0.3, the delta the rule set;
    the selection score."""
    r = results("adaptive/design")
    scores = adaptive_scores()
    lines = ["| quantile | multiple | " + " | ".join(f"{c}: late, rule - drpo 0.3, delta set" for c in DESIGN)
             + " | score (mean of the differences) | collapsed |", "|---|---|---|---|---|---|"]
    for rule in ADAPTIVE_RULES:
        label = adaptive_label(*rule)
        cells = []
        for c in DESIGN:
            m = r["conditions"][c]["methods"][label]
            delta = delta_set("adaptive/design", c, label)
            cells.append(f"{m['late']['mean']:.3f}, {_verdict(m['vs_baseline'])}, {delta:.3f}")
        collapsed = sum(r["conditions"][c]["methods"][label]["collapsed"] for c in DESIGN)
        lines.append(f"| {rule[0]:g} | {rule[1]:g} | " + " | ".join(cells) + f" | {scores[rule]:+.3f} | {collapsed} |")
    base = [f"{r['conditions'][c]['methods']['drpo']['late']['mean']:.3f}, baseline, 0.3" for c in DESIGN]
    lines.append("| fixed delta 0.3 (drpo) | - | " + " | ".join(base) + " | - | "
                 f"{sum(r['conditions'][c]['methods']['drpo']['collapsed'] for c in DESIGN)} |")
    return "\n".join(lines)


def adaptive_validation() -> dict[str, dict]:
    """Per validation condition: the selected rule's entry, the fixed deltas', the best fixed delta (highest mean
    late accuracy, picked after looking) and the rule's paired differences to fixed 0.3 and to that best."""
    from drpo.lab.stats import paired_difference
    from drpo.lab.verdict import per_seed_values

    r = results("adaptive/validation")
    label = adaptive_label(*adaptive_selected())
    out = {}
    for c in VALIDATION:
        methods = r["conditions"][c]["methods"]
        fixed = {d: methods[lab] for d, lab in FIXED.items() if methods.get(lab, {}).get("seeds")}
        best = max(fixed, key=lambda d: fixed[d]["late"]["mean"])
        rule = methods[label]
        out[c] = {"rule": rule, "fixed": fixed, "best": best, "vs_0.3": rule["vs_baseline"],
                  "vs_best": paired_difference(per_seed_values(rule), per_seed_values(fixed[best])),
                  "delta_set": delta_set("adaptive/validation", c, label)}
    return out


def adaptive_validation_table() -> str:
    lines = ["| condition | fixed 0.15 | fixed 0.3 | fixed 0.5 | selected rule (delta set) | rule - fixed 0.3 "
             "| best fixed | rule - best fixed |", "|---|---|---|---|---|---|---|---|"]
    for c, v in adaptive_validation().items():
        fixed = [f"{v['fixed'][d]['late']['mean']:.3f} ± {v['fixed'][d]['late']['std']:.3f}" if d in v["fixed"] else "-"
                 for d in FIXED]
        rule = v["rule"]
        best = f"{v['best']:g}" + ("" if len(v["fixed"]) == len(FIXED) else
                                    f" (of {', '.join(f'{d:g}' for d in v['fixed'])}: the others unfinished)")
        lines.append(f"| {c} | " + " | ".join(fixed) + f" | {rule['late']['mean']:.3f} ± {rule['late']['std']:.3f} "
                     f"({v['delta_set']:.3f}) | {_verdict(v['vs_0.3'])} | {best} | {_verdict(v['vs_best'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docs/results/smollm2/README.md
def comparison_table(sweep: str, condition: str) -> str:
    """Per method of a comparison against one baseline in one condition: late accuracy, its paired difference to
    the baseline with Holm's adjusted p, the area under the curve's paired difference (learning speed), the
    collapses (the SmolLM2 comparison, the built-in model under llama.cpp)."""
    r = results(sweep)
    methods = r["conditions"][condition]["methods"]
    baseline = r["baseline"]
    lines = [f"| method | seeds | late accuracy | late - {baseline} (paired, 95% t interval) | p (Holm-adjusted) "
             f"| area - {baseline} | collapsed |", "|---|---|---|---|---|---|---|"]
    for label, m in methods.items():
        late = f"{m['late']['mean']:.3f} ± {m['late']['std']:.3f}"
        if label == baseline:
            lines.append(f"| {label} | {m['seeds']} | {late} | baseline | - | baseline | {m['collapsed']} |")
            continue
        v, a = m["vs_baseline"], m["auc_vs_baseline"]
        lines.append(f"| {label} | {m['seeds']} | {late} | {diff(v)} {v['verdict']}{_holm_mark(v)} "
                     f"| {v['p']:.3f} ({v['p_holm']:.3f}) | {diff(a)} {a['verdict']} | {m['collapsed']} |")
    return "\n".join(lines)


ENGINE_SWEEP_CONDITIONS = ("llamacpp_q4", "llamacpp_q4_lag", "llamacpp_q4_lag_strong")


TABLES = {
    "docs/losses.md": (readme_delta_table,),
    "docs/stress_test.md": (readme_offpolicy_table,),
    "docs/results/README.md": (lambda: mismatch_table("delta"), lambda: mismatch_table("offpolicy"),
                               lambda: results_delta_table("late"), lambda: results_delta_table("final"),
                               lambda: results_offpolicy_table("late"), lambda: results_offpolicy_table("final"),
                               mechanism_table),
    "docs/results/adaptive/README.md": (adaptive_design_table, adaptive_validation_table),
    "docs/results/smollm2/README.md": (lambda: comparison_table("smollm2/comparison", "fp8_stale"),),
    "docs/results/engines/README.md": (lambda: engines_table("engines/short"), lambda: engines_table("engines/long")),
    "docs/benchmarks.md": (engines_benchmark_table,),
    "docs/results/long/README.md": (lambda: engines_table("long/mismatch"), tail_table),
}

D = "conditions.{}.methods.{}."  # prefix of one method's entry in one condition
# (document, text with {} fields, results file under docs/results/, keys filling the fields in order, formats)
CLAIMS: list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("docs/results/README.md", "DRPO: under strong staleness {}, under moderate staleness {}, under fp8 {}",
     "baselines/results.json", tuple(D.format(c, "ppo_tis") + "vs_baseline" for c in ("stale_strong", "stale", "fp8")),
     ("diff", "diff", "diff")),
    ("docs/results/README.md", "by area under the curve, {} (its late accuracy: {}, not separable)",
     "baselines/results.json", (D.format("stale_strong", "gspo") + "auc_vs_baseline",
                                D.format("stale_strong", "gspo") + "vs_baseline"), ("diff", "diff")),
    ("docs/results/README.md", "whose area is {} behind", "baselines/results.json",
     (D.format("stale_strong", "ppo_clip_higher") + "auc_vs_baseline",), ("diff",)),
    ("docs/benchmarks.md", "each sync writes and loads a GGUF ({:.2f}-{:.2f} s against {:.2f} s", "engines/benchmark.json",
     ("llamacpp:f16.sync_s", "llamacpp:q4_0.sync_s", "native:bf16.sync_s"), (".2f", ".2f", ".2f")),
    ("README.md", "the warm-up stopped at greedy probe accuracy {:.3f} (target {}) after {} supervised steps",
     "default/summary.json", ("base_model.warmup_probe_accuracy", "base_model.warmup_target_accuracy",
                              "base_model.warmup_steps"), (".3f", "g", "d")),
    ("README.md", "held-out greedy accuracy from {:.3f} to {:.3f} (best {:.3f}) in {} steps", "default/summary.json",
     ("eval/accuracy_start", "eval/accuracy_final", "eval/accuracy_best", "steps"), (".3f", ".3f", ".3f", "d")),
    ("README.md", "late accuracy (the mean of the evaluations over the last 20% of steps) {:.3f}", "default/metrics.jsonl.gz",
     ("late:eval/accuracy",), (".3f",)),
    ("README.md", "mean |pi - mu| between {} and {} per step, {:.0f}% of tokens weighted above 1",
     "default/metrics.jsonl.gz", ("min:mismatch/abs_mean", "max:mismatch/abs_mean", "mean:loss/amplified_frac"),
     ("sci", "sci", "%.0f")),
    ("README.md", "weights between {:.2f} and {:.2f}", "default/metrics.jsonl.gz",
     ("min:loss/weight_min", "max:loss/weight_max"), (".2f", ".2f")),
    ("README.md", "up to {:.1f}% of a step's tokens corrective", "default/metrics.jsonl.gz",
     ("max:loss/corrective_frac",), ("%.1f",)),
    ("README.md", "took {:.0f} s (`wall_time_s`); before it, building the base model took {:.0f} s (`setup_time_s`), "
     "{:.0f} s of them in the warm-up", "default/summary.json",
     ("wall_time_s", "setup_time_s", "base_model.warmup_s"), (".0f", ".0f", ".0f")),
    ("README.md", "process took {:.0f} s in all", "default/summary.json", ("process_time_s",), (".0f",)),
    ("docs/losses.md", "0.3 against 0.5 under strong staleness: {}", "delta/results.json",
     (D.format("stale_strong", "drpo:delta=0.3") + "vs_baseline",), ("diff",)),
    ("docs/losses.md", "the 13 comparisons made against 0.5 in that condition (Holm, adjusted p {:.3f})", "delta/results.json",
     (D.format("stale_strong", "drpo:delta=0.3") + "vs_baseline.p_holm",), (".3f",)),
    ("docs/results/README.md", "(Holm) the separation does not hold (adjusted p {:.3f})", "delta/results.json",
     (D.format("stale_strong", "drpo:delta=0.3") + "vs_baseline.p_holm",), (".3f",)),
    ("docs/results/README.md", "strong staleness survives Holm's correction (adjusted p {:.3f})", "delta/results.json",
     (D.format("stale_strong", "drpo:delta=0.05") + "vs_baseline.p_holm",), (".3f",)),
    ("docs/results/adaptive/README.md", "Holm's correction for the four rules: adjusted p {:.3f})",
     "adaptive/design/results.json", (D.format("fp8", "drpo:adaptive_delta.enabled=true,adaptive_delta.quantile=0.99,"
                                               "adaptive_delta.multiple=2") + "vs_baseline.p_holm",), (".3f",)),
    ("README.md", "comparisons (Holm), {:d} of those {:d} remain (CISPO and SPO), and {:d} of {:d} under strong staleness",
     "offpolicy/results.json", ("count_holm:stale", "count:late:worse:stale", "count_holm:stale_strong",
                                "count:late:worse:stale_strong"), ("d", "d", "d", "d")),
    ("docs/results/README.md", "final-evaluation table said 9 ({:d} of the {:d} survive Holm's correction",
     "offpolicy/results.json", ("count_holm:stale_strong", "count:late:worse:stale_strong"), ("d", "d")),
    ("docs/losses.md", "level with it under fp8: {}", "delta/results.json",
     (D.format("fp8", "drpo:delta=0.3") + "vs_baseline",), ("diff",)),
    ("docs/stress_test.md", "PPO clip-higher has the highest late mean ({}, {} against DRPO)", "offpolicy/results.json",
     (D.format("stale_strong", "ppo_clip_higher") + "late.mean", D.format("stale_strong", "ppo_clip_higher")
      + "vs_baseline"), (".3f", "diff")),
    ("docs/stress_test.md", "DPPO-TV {}, DPPO-KL {}", "offpolicy/results.json",
     (D.format("stale_strong", "dppo_binary_tv") + "vs_baseline", D.format("stale_strong", "dppo_binary_kl")
      + "vs_baseline"), ("diff", "diff")),
    ("docs/stress_test.md", "pg_is ({} and {})", "offpolicy/results.json",
     (D.format("fp8", "pg_is") + "vs_baseline", D.format("moe_bf16", "pg_is") + "vs_baseline"), ("diff", "diff")),
    ("docs/stress_test.md", "0.15 by {} under moderate staleness", "offpolicy/results.json",
     (D.format("stale", "drpo:delta=0.15") + "vs_baseline",), ("diff",)),
    ("docs/stress_test.md", "pull part's gradient norm was {}x the policy gradient's under fp8 and {}x under strong staleness "
     "at delta 0.15, against {}x and {}x at 0.5", "delta/results.json",
     (D.format("fp8", "drpo:delta=0.15") + "pull_to_pg.mean", D.format("stale_strong", "drpo:delta=0.15")
      + "pull_to_pg.mean", D.format("fp8", "drpo") + "pull_to_pg.mean", D.format("stale_strong", "drpo")
      + "pull_to_pg.mean"), (".2f", ".2f", ".2f", ".2f")),
    ("docs/stress_test.md", "changed late accuracy by {} (fp8) and {} (staleness)", "delta/results.json",
     ("clipped_vs_0.15:fp8", "clipped_vs_0.15:stale_strong"), ("diff", "diff")),
    ("docs/results/README.md", "DRPO at 0.3 against 0.5: {} under strong staleness and {} under fp8",
     "delta/results.json", (D.format("stale_strong", "drpo:delta=0.3") + "vs_baseline",
                            D.format("fp8", "drpo:delta=0.3") + "vs_baseline"), ("diff", "diff")),
    ("docs/results/README.md", "area under the curve {} (stale_strong) and {} (fp8)", "delta/results.json",
     (D.format("stale_strong", "drpo:delta=0.3") + "auc_vs_baseline", D.format("fp8", "drpo:delta=0.3")
      + "auc_vs_baseline"), ("diff", "diff")),
    ("docs/results/README.md", "final evaluation alone {} (stale_strong) and {} (fp8)", "delta/results.json",
     (D.format("stale_strong", "drpo:delta=0.3") + "final_vs_baseline", D.format("fp8", "drpo:delta=0.3")
      + "final_vs_baseline"), ("diff", "diff")),
    ("docs/results/README.md", "DRPO at 0.5 ended at {} on the final evaluation, {} over the last two",
     "offpolicy/results.json", (D.format("stale_strong", "drpo") + "final.mean",
                                D.format("stale_strong", "drpo") + "late.mean"), (".3f", ".3f")),
    ("docs/results/README.md", "the paired differences of the area under the curve: PPO clip-higher {}, DPPO-TV {}",
     "offpolicy/results.json", (D.format("stale_strong", "ppo_clip_higher") + "auc_vs_baseline",
                                D.format("stale_strong", "dppo_binary_tv") + "auc_vs_baseline"), ("diff", "diff")),
    ("docs/results/README.md", "at 0.15 by {} (stale)", "offpolicy/results.json",
     (D.format("stale", "drpo:delta=0.15") + "vs_baseline",), ("diff",)),
    ("docs/results/README.md", "0.3 is ahead of DPPO-TV at its best (0.1) by {} under strong staleness",
     "delta/results.json", ("conditions.stale_strong.sweep_best.1.vs_first",), ("-diff",)),
    ("docs/results/README.md", "seed 0: {:.3f} at step 40, {:.3f} at step 100", "offpolicy/runs/stale_strong/drpo/seed0",
     ("eval@40", "eval@100"), (".3f", ".3f")),
    ("docs/losses.md", "fp8 rollouts (mean |pi - mu| {}, p99 {:.3f}, max {:.2f}) and strong staleness (8 updates per batch on "
     "rollouts 4 steps old: mean {:.3f}, p99 {:.2f}, max {:.2f})", "delta/results.json",
     tuple(f"conditions.{c}.mismatch.{k}" for c in ("fp8", "stale_strong") for k in ("abs_mean", "p99", "max")),
     ("sci", ".3f", ".2f", ".3f", ".2f", ".2f")),
    ("docs/losses.md", "start {:.3f};", "delta/results.json", (D.format("fp8", "drpo") + "start.mean",), (".3f",)),
    ("docs/results/README.md", "(start {:.3f} ± {:.3f} for every method)", "delta/results.json",
     (D.format("fp8", "drpo") + "start.mean", D.format("fp8", "drpo") + "start.std"), (".3f", ".3f")),
    ("docs/results/README.md", "(start {:.3f} ± {:.3f} in the dense conditions, {:.3f} under moe_bf16", "offpolicy/results.json",
     (D.format("stale", "drpo") + "start.mean", D.format("stale", "drpo") + "start.std",
      D.format("moe_bf16", "drpo") + "start.mean"), (".3f", ".3f", ".3f")),
    ("README.md", "had DRPO at 0.5 separably ahead of {:.0f} of 10 methods under strong staleness",
     "offpolicy/results.json", ("count:final:worse:stale_strong",), ("d",)),
    ("docs/results/README.md", "DRPO is separably ahead of {:.0f} of 10 (pg_is, CISPO, MiniRL, SPO, drpo_reference, "
     "drpo_clipped) where the final-evaluation table said {:.0f}", "offpolicy/results.json",
     ("count:late:worse:stale_strong", "count:final:worse:stale_strong"), ("d", "d")),
    ("docs/results/README.md", "DRPO at 0.5 has the highest late mean and is separably ahead of {:.0f} of 10",
     "offpolicy/results.json", ("count:late:worse:stale",), ("d",)),
    *[("docs/mismatch.md", "| " + name + " | {:.3g} | {:.3g} | {:.3g} | {:.3g} | {:.2f}% | {:.2f}% | {:.2f}% | {:.3g} |",
        "mismatch/mismatch.json", tuple(f"sources.{i}.pairs.engine.{k}" for k in (
            "abs_p_mean", "abs_p_p99", "abs_p_p99.9", "abs_p_max", "abs_p_gt_0.05", "abs_p_gt_0.15",
            "ratio_outside_0.9_1.1", "kl_k3")), (".3g",) * 4 + ("%.2f",) * 3 + (".3g",))
      for i, name in enumerate(("bf16", "fp8 (W8A8)"))],
    ("docs/mismatch.md", "under fp8, {:.1f}% of the sampled tokens have a ratio outside [0.9, 1.1]", "mismatch/mismatch.json",
     ("sources.1.pairs.engine.ratio_outside_0.9_1.1",), ("%.1f",)),
    ("docs/mismatch.md", "On this mismatch alone ppo_clip (0.2) masks {:.2f}% of the tokens; the divergence masks "
     "(dppo_binary_tv 0.15, dppo_binary_kl 0.05) mask {:.2f}%", "mismatch/mismatch.json",
     ("sources.1.trust.masked/ppo_clip 0.2", "sources.1.trust.masked/dppo_binary_tv 0.15"), ("%.2f", "%.2f")),
    ("docs/mismatch.md", "give mean |pi - mu| {:.2g} (bf16), {:.1g} (fp16), {:.2g} (fp8 W8A8) and {:.2g} (int8 W8A8), with "
     "{:.1f}% and {:.1f}% of the tokens past 0.15", "smollm2/mismatch/mismatch.json",
     tuple(f"sources.{i}.pairs.engine.abs_p_mean" for i in range(4)) + tuple(
         f"sources.{i}.pairs.engine.abs_p_gt_0.15" for i in (2, 3)), (".2g", ".1g", ".2g", ".2g", "%.1f", "%.1f")),
    ("docs/stress_test.md", "DRPO's step-100 value ({:.3f}) was a high draw, after {:.3f} at step 80",
     "offpolicy/runs/stale_strong/drpo", ("seedmean@100", "seedmean@80"), (".3f", ".3f")),
    ("docs/results/README.md", "seed-mean {:.3f} at step 40, {:.3f} at step 80 (below the start, {:.3f}) and {:.3f} "
     "at step 100", "offpolicy/runs/stale_strong/drpo", ("seedmean@40", "seedmean@80", "seedmean@0", "seedmean@100"),
     (".3f", ".3f", ".3f", ".3f")),
    ("docs/results/smollm2/README.md", "| held-out greedy accuracy (200 problems) | {:.3f} | **{:.3f}** | {:.3f} | "
     "{:.3f} | {:.3f} |", "smollm2/metrics.jsonl.gz", tuple(f"@{s}:eval/accuracy" for s in (0, 10, 20, 30, 40)),
     (".3f",) * 5),
    *[("docs/benchmarks.md", "| " + name + " | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.1f} | {:.2f} | {:.2f}x | {:.2f} |",
        "smollm2/benchmark.json", tuple(f"{precision}.{k}" for k in (
            "rollout_s", "update_s", "step_s", "step_cpu_s", "eval_s", "eval_estimate_s", "eval_over_estimate",
            "peak_rss_gb")), (".2f",) * 4 + (".1f",) + (".2f",) * 3)
      for precision, name in (("amp", "amp: `model.autocast=bf16` (the recipe)"), ("fp32", "fp32"))],
    ("docs/benchmarks.md", "went 0.110 -> {:.3f} in 6 steps with amp against 0.110 -> {:.3f} in fp32",
     "smollm2/benchmark.json", ("amp.eval_accuracy.1", "fp32.eval_accuracy.1"), (".3f", ".3f")),
    ("docs/benchmarks.md", "took {:.1f} s of CPU with glibc's default and {:.1f} s with the variable, peak RSS {:.2f} "
     "against {:.2f}", "smollm2/benchmark_malloc.json", ("default.step_cpu_s", "mmap_threshold_131072.step_cpu_s",
                                                         "default.peak_rss_gb", "mmap_threshold_131072.peak_rss_gb"),
     (".1f", ".1f", ".2f", ".2f")),
    ("docs/training.md", "The recipe at the recommended delta goes from {:.3f} to {:.3f} held-out greedy accuracy in 10 steps",
     "smollm2/metrics.jsonl.gz", ("@0:eval/accuracy", "@10:eval/accuracy"), (".3f", ".3f")),
    *[(document, "late mean is the lowest of the five ({:.3f} against {:.3f} to {:.3f}", "smollm2/comparison/results.json",
       tuple(D.format("fp8_stale", m) + "late.mean" for m in ("drpo", "dppo_binary_tv", "ppo_tis")), (".3f",) * 3)
      for document in ("docs/training.md", "docs/results/smollm2/README.md")],
    ("docs/training.md", "DRPO at 0.15 is behind 0.3 by {} on its own interval but not after the correction (adjusted p "
     "{:.3f})", "smollm2/comparison/results.json",
     tuple(D.format("fp8_stale", "drpo:delta=0.15") + k for k in ("vs_baseline", "vs_baseline.p_holm")), ("diff", ".3f")),
    ("docs/results/smollm2/README.md", "**DRPO at 0.15 against 0.3: {}** on its own interval (p {:.3f}), but Holm's "
     "adjusted p is {:.3f}", "smollm2/comparison/results.json",
     tuple(D.format("fp8_stale", "drpo:delta=0.15") + k for k in ("vs_baseline", "vs_baseline.p", "vs_baseline.p_holm")),
     ("diff", ".3f", ".3f")),
    ("docs/results/smollm2/README.md", "all four differences are positive, from {:+.3f} (dppo_binary_tv) to {:+.3f} "
     "(ppo_tis)", "smollm2/comparison/results.json",
     tuple(D.format("fp8_stale", m) + "vs_baseline.mean" for m in ("dppo_binary_tv", "ppo_tis")), ("+.3f", "+.3f")),
    ("docs/results/smollm2/README.md", "The highest late mean is ppo_tis's, {:.3f}", "smollm2/comparison/results.json",
     (D.format("fp8_stale", "ppo_tis") + "late.mean",), (".3f",)),
    ("docs/results/smollm2/README.md", "evaluation after the start (step {:d})", "smollm2/comparison/results.json",
     (D.format("fp8_stale", "drpo") + "steps_to_target",), ("d",)),
    ("docs/results/smollm2/README.md", "from a start of {:.3f} for every method", "smollm2/comparison/results.json",
     (D.format("fp8_stale", "drpo") + "start.mean",), (".3f",)),
    ("docs/results/smollm2/README.md", "drpo pulled back {:.2f}% of the tokens (w < 0, down to {:.2f}) and amplified "
     "{:.1f}% (w > 1, up to {:.2f}); at 0.15, {:.2f}% and {:.1f}%, with w from {:.2f} to {:.2f}; the DPPO mask dropped "
     "{:.2f}%, PPO's clip {:.2f}%; ppo_tis's truncated weight amplified {:.1f}%", "smollm2/comparison/results.json",
     tuple(D.format("fp8_stale", method) + key for method, key in (
         ("drpo", "corrective_frac.mean"), ("drpo", "weight_min.mean"), ("drpo", "amplified_frac.mean"),
         ("drpo", "weight_max.mean"), ("drpo:delta=0.15", "corrective_frac.mean"),
         ("drpo:delta=0.15", "amplified_frac.mean"), ("drpo:delta=0.15", "weight_min.mean"),
         ("drpo:delta=0.15", "weight_max.mean"), ("dppo_binary_tv", "masked_frac.mean"),
         ("ppo_clip_higher", "masked_frac.mean"), ("ppo_tis", "amplified_frac.mean"))),
     ("%.2f", ".2f", "%.1f", ".2f", "%.2f", "%.1f", ".2f", ".2f", "%.2f", "%.2f", "%.1f")),
    ("docs/results/smollm2/README.md", "The largest per-step mean |pi - mu| was about {:.2f} for every method",
     "smollm2/comparison/results.json", (D.format("fp8_stale", "drpo") + "peak_mismatch.mean",), (".2f",)),
    *[("docs/results/smollm2/README.md", "{:.3f}, {:.3f}, {:.3f}, {:.3f} and {:.3f} for " + label,
       "smollm2/comparison/results.json", tuple(D.format("fp8_stale", label) + f"per_seed.{i}.late" for i in range(5)),
       (".3f",) * 5)
      for label in ("drpo", "drpo:delta=0.15")],
    ("docs/results/smollm2/README.md", "mean |pi - mu| {:.3f}, p99 {:.3f}, max {:.2f} (fp8 W8A8",
     "smollm2/comparison/results.json", ("conditions.fp8_stale.mismatch.abs_mean", "conditions.fp8_stale.mismatch.p99",
                                         "conditions.fp8_stale.mismatch.max"), (".3f", ".3f", ".2f")),
    ("docs/results/smollm2/README.md", "{:d} runs took {:.0f} minutes of run time summed",
     "smollm2/comparison/runs.tar.xz", ("count", "minutes"), ("d", ".0f")),
    ("examples/smollm2/drpo_arith.yaml", "accuracy {:.3f} -> {:.3f} at step 10", "smollm2/metrics.jsonl.gz",
     ("@0:eval/accuracy", "@10:eval/accuracy"), (".3f", ".3f")),
    ("docs/results/smollm2/README.md", "**{:.0f} s** in the trainer", "smollm2/summary.json", ("wall_time_s",), (".0f",)),
    ("docs/results/smollm2/README.md", "A step: rollout {:.1f} s (median;", "smollm2/metrics.jsonl.gz",
     ("median:time/rollout_s",), (".1f",)),
    ("docs/results/smollm2/README.md", "update {:.1f} s (four", "smollm2/metrics.jsonl.gz",
     ("median:time/update_s",), (".1f",)),
    ("docs/results/smollm2/README.md", "Peak resident memory {:.2f} GiB", "smollm2/summary.json",
     ("memory/peak_rss_gb",), (".2f",)),
    ("docs/results/smollm2/README.md", "replies shorten from {:.1f} to", "smollm2/metrics.jsonl.gz",
     ("@1:response_length/mean",), (".1f",)),
    ("docs/results/smollm2/README.md", "entropy of pi falls from {:.1f} to {:.2f} nats", "smollm2/metrics.jsonl.gz",
     ("@1:entropy", "@40:entropy"), (".1f", ".2f")),
    ("docs/results/smollm2/README.md", "mean |pi - mu| at rollout time {} to {} per step", "smollm2/metrics.jsonl.gz",
     ("min:mismatch/abs_mean", "max:mismatch/abs_mean"), ("sci", "sci")),
    ("docs/results/smollm2/README.md", "DRPO's weight ranged from {:.2f} to {:.2f}; on average {:.1f}% of tokens had "
     "w > 1", "smollm2/metrics.jsonl.gz", ("min:loss/weight_min", "max:loss/weight_max", "mean:loss/amplified_frac"),
     (".2f", ".2f", "%.1f")),
    ("docs/results/smollm2/README.md", "{:.2f}% had w < 0 (past the 0.3 boundary, pulled back), up to {:.1f}% in a step",
     "smollm2/metrics.jsonl.gz", ("mean:loss/corrective_frac", "max:loss/corrective_frac"), ("%.2f", "%.1f")),
    ("docs/training.md", "gain {:.1f} to {:.0f} points of greedy accuracy (the least: ppo_clip_higher's seed 0, {:.1f})",
     "smollm2/compare/results.json", ("gain.*.min", "gain.*.max", "gain.ppo_clip_higher.min"), (".1f", ".0f", ".1f")),
    ("docs/results/smollm2/README.md", "Every method gains {:.1f} to {:.0f} points in 12 steps",
     "smollm2/compare/results.json", ("gain.*.min", "gain.*.max"), (".1f", ".0f")),
    ("docs/losses.md", "the selected rule is not separable from fixed 0.3: {} under staleness and {} under fp8 with "
     "staleness", "adaptive/validation/results.json", ("adaptive:vs_0.3:stale", "adaptive:vs_0.3:fp8_stale"),
     ("diff", "diff")),
    ("docs/results/adaptive/README.md", "rule - fixed 0.3: {} under stale and {} under fp8_stale",
     "adaptive/validation/results.json", ("adaptive:vs_0.3:stale", "adaptive:vs_0.3:fp8_stale"), ("diff", "diff")),
    ("docs/results/adaptive/README.md", "under stale the best fixed delta is {:g}, and rule - best fixed is {}",
     "adaptive/validation/results.json", ("adaptive:best:stale", "adaptive:vs_best:stale"), ("g", "diff")),
    ("docs/results/adaptive/README.md", "under fp8_stale the best fixed delta is {:g}, and rule - best fixed is {}",
     "adaptive/validation/results.json", ("adaptive:best:fp8_stale", "adaptive:vs_best:fp8_stale"), ("g", "diff")),
    ("docs/results/adaptive/README.md", "Validation: {:d} new runs, {:.0f} minutes of run time summed over runs",
     "adaptive/validation/runs.tar.xz", ("count", "minutes"), ("d", ".0f")),
    ("docs/results/adaptive/README.md", "The rule set delta {:.2f} on average under stale (p99 of |pi - mu| about "
     "{:.1f}) and {:.2f} under fp8_stale", "adaptive/validation/results.json",
     ("adaptive:delta_set:stale", "conditions.stale.mismatch.p99", "adaptive:delta_set:fp8_stale"), (".2f", ".1f", ".2f")),
    ("docs/results/adaptive/README.md", "**quantile {:g} x multiple {:g}** (score {:+.3f})",
     "adaptive/design/results.json", ("adaptive:quantile", "adaptive:multiple", "adaptive:score"), ("g", "g", "+.3f")),
    ("docs/results/adaptive/README.md", "The p99 of |pi - mu| is about {:.2f} under strong staleness and {:.3f} under "
     "fp8", "adaptive/design/results.json", ("conditions.stale_strong.mismatch.p99", "conditions.fp8.mismatch.p99"),
     (".2f", ".3f")),
    ("docs/results/adaptive/README.md", "multiple 2 runs stale_strong near max_delta ({:.2f} on average",
     "adaptive/design/results.json", ("adaptive:design_delta:stale_strong",), (".2f",)),
    ("docs/results/long/README.md", "| mean training reward (4 prompts x 8 samples a step) | {:.3f} | {:.3f} | "
     "mean reply length (tokens) | {:.1f} | {:.1f} | entropy of pi per token (nats) | {:.3f} | {:.3f} | "
     "mean \\|pi - mu\\| per token | {} | {} |", "long/pilot/metrics.jsonl.gz",
     tuple(f"mean@{steps}:{metric}" for metric in ("reward/mean", "response_length/mean", "entropy",
                                                     "mismatch/abs_mean") for steps in ("1-7", "8-14")),
     (".3f", ".3f", ".1f", ".1f", ".3f", ".3f", "sci", "sci")),
    ("docs/results/long/README.md", "Greedy held-out accuracy fell, {:.3f} to {:.3f} at step 10",
     "long/pilot/metrics.jsonl.gz", ("@0:eval/accuracy", "@10:eval/accuracy"), (".3f", ".3f")),
    ("docs/results/long/README.md", "DRPO's pull-back (w < 0) touched at most {:.2f}% of a step's tokens",
     "long/pilot/metrics.jsonl.gz", ("max:loss/corrective_frac",), ("%.2f",)),
    ("docs/results/long/README.md", "A step took a median {:.0f} s to sample its rollouts and {:.0f} s for its four "
     "updates", "long/pilot/metrics.jsonl.gz", ("median:time/rollout_s", "median:time/update_s"), (".0f", ".0f")),
    ("docs/results/long/README.md", "the process peaked at {:.1f} GiB resident", "long/pilot/summary.json",
     ("memory/peak_rss_gb",), (".1f",)),
    ("docs/results/long/README.md", "For seed 0 that took {:d} steps ({:.0f} s on one core; probe {:.3f}). Its "
     "greedy accuracy on the first 128 held-out problems is then {:.3f}", "long/pilot/summary.json",
     ("base_model.warmup_steps", "base_model.warmup_s", "base_model.warmup_probe_accuracy", "eval/accuracy_start"),
     ("d", ".0f", ".3f", ".3f")),
    ("docs/results/long/README.md", "its sampled replies (temperature 1) were right {:.3f} of the time at the first "
     "RL step", "long/pilot/metrics.jsonl.gz", ("@1:reward/mean",), (".3f",)),
    ("docs/training.md", "after {:d} steps of 8 problems (lr 1e-4; {:.0f} s on one core) its probe read {:.3f}",
     "long/pilot/summary.json", ("base_model.warmup_steps", "base_model.warmup_s", "base_model.warmup_probe_accuracy"),
     ("d", ".0f", ".3f")),
    ("docs/results/adaptive/README.md", "Design: {:d} new runs, {:.0f} minutes of run time summed over runs",
     "adaptive/design/runs.tar.xz", ("count", "minutes"), ("d", ".0f")),
]


def _sweep_dir(path: Path) -> Path:
    """The sweep directory of a path under SWEEP_DIR/runs/..."""
    return next(p.parent for p in path.parents if p.name == "runs")


def value(file: str, key: str):
    """The value of ``key`` in docs/results/``file`` (a few derived keys: see below)."""
    path = ROOT / "docs" / "results" / file
    if key.startswith("seedmean@"):  # a method's directory of seed runs: the seed-mean eval accuracy at one step
        step = int(key[9:])
        seeds = sorted({name.split("/")[3] for name in _run_archive(_sweep_dir(path)).archived()
                        if name.startswith(f"{path.relative_to(_sweep_dir(path)).as_posix()}/seed")})
        values = [value(f"{file}/{seed}", f"eval@{step}") for seed in seeds]
        return sum(values) / len(values)
    if key.startswith("eval@"):  # a run directory (read from its sweep's archive): its eval accuracy at one step
        step = int(key[5:])
        text = _run_archive(_sweep_dir(path)).files(path)["metrics.jsonl"]
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        return next(r["eval/accuracy"] for r in records if r["step"] == step and "eval/accuracy" in r)
    if path.suffix == ".gz":  # a run's compressed metrics: the extreme of one key over its steps
        import gzip
        import statistics

        # min, max, mean, median over the steps (or over steps A-B: mean@A-B), or @STEP: at one step
        extreme, metric = key.split(":", 1)
        records = [r for r in map(json.loads, gzip.decompress(path.read_bytes()).decode().splitlines()) if metric in r]
        if re.fullmatch(r"\w+@\d+-\d+", extreme):
            extreme, first, last = re.split(r"[@-]", extreme)
            records = [r for r in records if int(first) <= r["step"] <= int(last)]
        if extreme == "late":  # the primary outcome of a run: mean eval accuracy over its last 30% of steps
            from drpo.lab.outcomes import late_accuracy

            return late_accuracy([(r["step"], r[metric]) for r in records])
        if extreme.startswith("@"):
            return next(r[metric] for r in records if r["step"] == int(extreme[1:]))
        return {"min": min, "max": max, "mean": statistics.fmean, "median": statistics.median}[extreme](
            [r[metric] for r in records])
    if key.startswith("adaptive:"):  # the adaptive sweeps' selection and validation (see adaptive_validation)
        what, _, condition = key[9:].partition(":")
        if what in ("quantile", "multiple"):
            return adaptive_selected()[what == "multiple"]
        if what == "score":
            return adaptive_scores()[adaptive_selected()]
        if what == "design_delta":
            return delta_set("adaptive/design", condition, adaptive_label(*adaptive_selected()))
        return adaptive_validation()[condition][what]
    if path.name == "runs.tar.xz":  # a sweep's own runs: how many, and their wall time summed, in minutes
        from drpo.lab.archive import read_archive

        summaries = [json.loads(data) for name, data in read_archive(path).items() if name.endswith("/summary.json")]
        return len(summaries) if key == "count" else sum(s["wall_time_s"] for s in summaries) / 60
    data = json.loads(path.read_text())
    if key.startswith("gain."):  # per seed: final minus start accuracy, in points
        _, who, end = key.split(".")
        cond = next(iter(data["conditions"].values()))
        gains = [100 * (n["final"] - n["start"]) for label, m in cond["methods"].items() if who in ("*", label)
                 for n in m["per_seed"].values()]
        return min(gains) if end == "min" else max(gains)
    if key.startswith("count:"):  # count:OUTCOME:VERDICT:CONDITION, how many methods the baseline comparison so judged
        _, outcome, verdict, condition = key.split(":")
        field = "vs_baseline" if outcome == "late" else f"{outcome}_vs_baseline"
        return sum(1 for m in data["conditions"][condition]["methods"].values()
                   if m[field] is not None and m[field]["verdict"] == verdict)
    if key.startswith("count_holm:"):  # count_holm:CONDITION, late-accuracy separations that survive Holm's correction
        methods = data["conditions"][key.split(":", 1)[1]]["methods"].values()
        return sum(1 for m in methods if m["vs_baseline"] is not None and m["vs_baseline"]["verdict"] != "not separable"
                   and m["vs_baseline"]["p_holm"] < 0.05)
    if key.startswith("clipped_vs_0.15:"):  # drpo_clipped against DRPO at 0.15 in one condition, on late accuracy
        from drpo.lab.stats import paired_difference
        from drpo.lab.verdict import per_seed_values

        methods = data["conditions"][key.split(":", 1)[1]]["methods"]
        return paired_difference(per_seed_values(methods["drpo_clipped:delta=0.15"]),
                                 per_seed_values(methods["drpo:delta=0.15"]))
    return get(data, key)


def render_claim(text: str, file: str, keys: tuple[str, ...], formats: tuple[str, ...]) -> str:
    """The claim's sentence with its numbers from the results file (what `python tests/doc_claims.py` prints)."""
    return re.sub(r"\{:[^}]*\}", "{}", text).format(*render_values(file, keys, formats))


def paragraphs(document: str) -> list[str]:
    """The document's paragraphs (blocks between blank lines), each with its whitespace collapsed."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", document)]


def claim_holds(document: str, file: str, keys: tuple[str, ...], formats: tuple[str, ...]) -> bool:
    """Whether one paragraph of ``document`` quotes the claim's numbers, in order: the numbers are checked against
    the results file, the words around them are the writer's (a reworded sentence keeps its test)."""
    values = render_values(file, keys, formats)
    for paragraph in paragraphs(document):
        at = 0
        for value in values:
            at = paragraph.find(value, at)
            if at < 0:
                break
            at += len(value)
        else:
            return True
    return False


def render_values(file: str, keys: tuple[str, ...], formats: tuple[str, ...]) -> list[str]:
    values = []
    for key, fmt in zip(keys, formats, strict=True):
        v = value(file, key)
        if fmt == "diff":
            values.append(diff(v))
        elif fmt == "sci":  # 8.5e-3
            values.append(f"{v:.1e}".replace("e-0", "e-"))
        elif fmt.startswith("%"):  # a share, written in percent
            values.append(format(100 * v, fmt[1:]))
        elif fmt == "-diff":  # the difference the other way round
            values.append(diff({"mean": -v["mean"], "low": -v["high"], "high": -v["low"]}))
        else:
            values.append(format(v, fmt))
    return values


if __name__ == "__main__":
    for document, renderers in TABLES.items():
        for render in renderers:
            print(f"{document}:\n\n{render()}\n")
    for document, text, file, keys, formats in CLAIMS:
        print(f"{document}: {render_claim(text, file, keys, formats)}")
