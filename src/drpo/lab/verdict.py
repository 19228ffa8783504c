"""The verdict of a sweep: sentences generated from results.json's numbers, nothing written by hand.

Every comparison is a paired difference over seeds (drpo.lab.stats), with its two-sided t interval,
of the primary outcome: late accuracy, the mean eval accuracy over the last 20% of a run's steps
(drpo.lab.outcomes); wins and losses are decided by the interval alone:

- *better* / *worse*: the interval of (method - reference) lies above / below 0;
- *not separable*: it contains 0, or fewer than 2 seeds are paired (no interval).

Every method against the baseline is one family of tests: the baseline sentence also says which of its
separations survive Holm's correction for that family (drpo.lab.stats.holm).

Per condition: the method with the highest mean late accuracy and which methods are not separable from
it (the top group; a method *wins* the condition only when it is better than every other), the collapses,
the first to reach the target, then every method against the named baseline (results['baseline']). Over
conditions: where the baseline won, sat in the top group, or was separably behind the leader. A condition
where some method has no finished run yet (a sweep still running) is not judged and not counted; one where
every method has some but not all of its planned seeds is read as *interim*, said so, and not counted.
"""

from __future__ import annotations

from drpo.lab.outcomes import LATE_WINDOW, PRIMARY
from drpo.lab.stats import paired_difference

OUTCOME = f"late accuracy (mean eval accuracy over the last {round(100 * LATE_WINDOW)}% of steps)"


def verdict(results: dict) -> dict:
    """{'conditions': {name: [sentences]}, 'overall': [sentences]}."""
    base = results.get("baseline")
    level = round(100 * results.get("level", 0.95))
    out = {"conditions": {}, "overall": []}
    standing = {}  # condition -> (leader, top group, leader's difference to the baseline)
    for condition, cond in results["conditions"].items():
        methods = {label: m for label, m in cond["methods"].items()
                   if m["seeds"] > 0 and m[PRIMARY]["mean"] is not None}
        if not methods:
            out["conditions"][condition] = [f"{condition}: no finished runs."]
            continue
        if cond.get("weak_base_seeds"):  # the runs had little or no reward signal: a ranking would rank noise
            seeds = ", ".join(str(s) for s in cond["weak_base_seeds"])
            out["conditions"][condition] = [
                f"{condition}: not judged. The base model of seed {seeds} missed its warm-up target "
                "(summary.json: base_model.missed_target), so RL from it had little or no reward signal and the "
                "highest late accuracy would rank noise; raise warmup.steps or use an easier task."]
            continue
        leader = max(methods, key=lambda label: methods[label][PRIMARY]["mean"])
        missing = [label for label in cond["methods"] if label not in methods]
        if missing:  # a sweep still running: rank what finished, name no winner and count no condition as won
            out["conditions"][condition] = [
                _leader_sentence(condition, leader, [leader], {leader: methods[leader]}, level)[:-1]
                + f" among the methods with finished runs; none yet for {_join(missing)}, so no method is judged "
                "against the others here until they finish."]
            continue
        to_leader = {label: paired_difference(per_seed_values(m), per_seed_values(methods[leader]),
                                              results.get("level", 0.95))
                     for label, m in methods.items() if label != leader}
        top = [leader] + [label for label, d in to_leader.items() if d["verdict"] != "worse"]
        planned = len(results.get("seeds", ())) * len(cond["methods"])
        finished = sum(m["seeds"] for m in methods.values())
        sentences = []
        if finished < planned:  # a sweep read while it runs: what its finished seeds say, not its verdict
            sentences.append(f"{condition}: interim, {finished} of {planned} planned runs finished. The sentences "
                             "below read the seeds finished so far; the sweep's verdict waits for the rest, and this "
                             "condition is not counted in the overall summary.")
        else:
            standing[condition] = (leader, top, to_leader.get(base))
        sentences.append(_leader_sentence(condition, leader, top, methods, level))
        collapsed = [f"{label} ({m['collapsed']}/{m['seeds']} seeds)" for label, m in methods.items() if m["collapsed"]]
        sentences.append(f"Collapsed: {_join(collapsed)}." if collapsed else "No method collapsed.")
        if cond["target"] is not None:
            sentences.append(_target_sentence(cond["target"], methods))
        if base in methods and len(methods) > 1:
            sentences.append(_baseline_sentence(base, methods, level))
        out["conditions"][condition] = sentences
    if base is not None:
        out["overall"] = _overall(base, results, standing)
    return out


def _leader_sentence(condition: str, leader: str, top: list[str], methods: dict, level: int) -> str:
    seeds = sorted({m["seeds"] for m in methods.values()})
    seed_text = f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1 else "varying seeds"
    tied = [label for label, m in methods.items() if label != leader and m[PRIMARY]["mean"] == methods[leader][PRIMARY]["mean"]]
    best = f"{leader} (tied with {_join(tied)})" if tied else leader
    text = (f"{condition}: highest mean {OUTCOME}: {best}, {plus_minus(methods[leader][PRIMARY])} ({seed_text}; "
            f"final evaluation alone: {plus_minus(methods[leader]['final'])})")
    if len(methods) == 1:
        return text + "."
    if top == [leader]:
        return text + f", better than every other method (paired {level}% t intervals): {leader} wins."
    return (text + f"; not separable from it (paired {level}% t interval of the difference contains 0, or one "
            f"seed): {_join(top[1:])}. No method wins.")


def _target_sentence(target: float, methods: dict) -> str:
    reached = sorted((m["steps_to_target"], label) for label, m in methods.items() if m["steps_to_target"] is not None)
    never = [label for label, m in methods.items() if m["steps_to_target"] is None]
    if not reached:
        return f"No method reached the target accuracy {target:.3f}."
    first = [label for step, label in reached if step == reached[0][0]]
    return (f"First to reach the target accuracy {target:.3f} (seed-mean curve): {_join(first)} at step "
            f"{reached[0][0]}" + (f"; never reached by {_join(never)}." if never else "; every method reached it."))


def _baseline_sentence(base: str, methods: dict, level: int) -> str:
    groups = {"better": [], "worse": [], "not separable": []}
    for label, m in methods.items():
        if label != base:
            groups[m["vs_baseline"]["verdict"]].append(f"{label} {format_difference(m['vs_baseline'])}")
    parts = [f"{name}: {_join(items)}" for name, items in groups.items() if items]
    text = (f"Against {base} (late accuracy, method - {base}, paired over seeds, {level}% t interval): "
            + "; ".join(parts) + ".")
    return text + _family_sentence(base, methods, level)


def _family_sentence(base: str, methods: dict, level: int) -> str:
    """Which separations from the baseline survive Holm's correction for the whole family of comparisons."""
    family = [label for label, m in methods.items() if label != base and m["vs_baseline"].get("p_holm") is not None]
    separated = [label for label in family if methods[label]["vs_baseline"]["verdict"] != "not separable"]
    if len(family) < 2 or not separated:
        return ""
    alpha = 1 - level / 100

    def adjusted(label: str) -> str:
        p = methods[label]["vs_baseline"]["p_holm"]
        digits = 4 if f"{p:.3f}" == f"{alpha:.3f}" else 3  # 0.0496 is kept, 0.0504 is not: never print 0.050
        return f"{label} (adjusted p {'< 0.001' if p < 0.001 else f'{p:.{digits}f}'})"

    kept = [adjusted(label) for label in separated if methods[label]["vs_baseline"]["p_holm"] < alpha]
    lost = [adjusted(label) for label in separated if methods[label]["vs_baseline"]["p_holm"] >= alpha]
    text = f" Corrected for the {len(family)} comparisons against {base} (Holm, familywise {level}%): "
    if kept:
        text += f"still separated: {_join(kept)}"
    if lost:
        text += ("; " if kept else "") + f"no longer separated: {_join(lost)}"
    return text + "."


def _overall(base: str, results: dict, standing: dict) -> list[str]:
    won, top, behind, collapsed = [], [], [], []
    for condition, (leader, group, to_leader) in standing.items():
        m = results["conditions"][condition]["methods"].get(base)
        if not m or m["seeds"] == 0 or m[PRIMARY]["mean"] is None:
            continue
        if group == [base]:
            won.append(condition)
        elif base in group:
            top.append(condition)
        else:  # the leader minus the baseline, so the gap reads as positive
            gap = {**to_leader, "mean": -to_leader["mean"], "low": _neg(to_leader["high"]),
                   "high": _neg(to_leader["low"])}
            behind.append(f"{condition} (best: {leader}, ahead by {format_difference(gap)})")
        if m["collapsed"]:
            collapsed.append(f"{condition} ({m['collapsed']}/{m['seeds']} seeds)")
    total = len(won) + len(top) + len(behind)
    if total == 0:
        return []
    sentences = [f"{base} won {len(won)} of {total} condition{'s' if total > 1 else ''}"
                 + (f" ({_join(won)})" if won else "") + " (better than every other method on late accuracy)."]
    if top:
        sentences.append(f"It was not separable from the highest mean in {_join(top)}.")
    if behind:
        sentences.append(f"It was separably behind the highest mean in {_join(behind)}.")
    sentences.append(f"{base} collapsed in {_join(collapsed)}." if collapsed else f"{base} never collapsed.")
    return sentences


def format_difference(d: dict) -> str:
    """'+0.050 [+0.010, +0.090]', or '+0.050 (1 paired seed, no interval)'."""
    if d["mean"] is None:
        return "(no paired seeds)"
    if d["low"] is None:
        return f"{d['mean']:+.3f} ({d['n']} paired seed, no interval)"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def per_seed_values(entry: dict, outcome: str = PRIMARY) -> dict[int, float]:
    """seed -> one outcome ('late', 'final', 'auc') of one method's entry (seeds are strings once read back
    from JSON)."""
    return {int(seed): n[outcome] for seed, n in entry["per_seed"].items()}


def _neg(value: float | None) -> float | None:
    return None if value is None else -value


def _join(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def plus_minus(stat: dict, fmt: str = ".3f") -> str:
    if stat["mean"] is None:
        return "-"
    if stat["n"] < 2:
        return f"{stat['mean']:{fmt}}"
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}"
