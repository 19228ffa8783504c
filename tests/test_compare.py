"""`drpo compare` and its report: method specs, condition presets, the generated verdict, and a tiny sweep
end to end (its table checked against the runs' metrics.jsonl, its figures, reuse and resume)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from drpo.cli import main
from drpo.config import load_config
from drpo.experiments.collapse import detect_collapse
from drpo.experiments.compare import run_sweep, split_cli_lists
from drpo.experiments.conditions import CONDITIONS, get_conditions
from drpo.experiments.methods import METHODS, parse_method, parse_methods
from drpo.experiments.report import TABLE_HEADER, parse_table, verdict
from drpo.metrics import TIMING_PREFIXES
from drpo.trainer import Trainer

TINY = ["steps=4", "rollout.prompts=4", "rollout.group_size=4", "eval.every=2", "eval.prompts=16", "eval.samples=1",
        "warmup.steps=40", "warmup.target_accuracy=null", "model=tiny", "tensorboard=false"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DRPO_CACHE", str(tmp_path_factory.getbasetemp() / "drpo-cache"))


# ----------------------------------------------------------------------------- methods and conditions
def test_method_specs():
    drpo = parse_method("drpo")
    assert (drpo.label, drpo.loss, drpo.hyper) == ("drpo", "drpo", {"delta": 0.15})
    custom = parse_method("drpo:delta=0.3")
    assert custom.label == "drpo:delta=0.3" and custom.slug == "drpo_delta=0.3"
    assert custom.overrides() == ["loss=drpo", "loss.delta=0.3"]
    assert parse_method("drpo_reference").build().hyper.delta == 12.5
    minirl = parse_method("minirl")
    assert minirl.canonical == "ppo_clip" and minirl.build().hyper.anchor == "recompute"
    dual = parse_method("ppo_clip:eps_high=0.28,dual_clip=3")
    assert dual.hyper == {"eps_high": 0.28, "dual_clip": 3} and dual.slug == "ppo_clip_eps_high=0.28_dual_clip=3"
    assert parse_method("dppo_topk_tv").hyper == {}  # any registry name
    assert [m.label for m in parse_methods(None)] == list(METHODS)


def test_method_spec_errors_name_what_is_valid():
    with pytest.raises(ValueError, match="Valid names"):
        parse_method("drpoo")
    with pytest.raises(ValueError, match="delta"):
        parse_method("drpo:delt=0.3")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("drpo:0.3")
    with pytest.raises(ValueError, match="given twice"):
        parse_methods(["spo", "spo"])


def test_default_methods_are_the_issue_list():
    built = {label: parse_method(label).build() for label in METHODS}
    assert built["ppo_clip_higher"].hyper.eps_low == 0.2 and built["ppo_clip_higher"].hyper.eps_high == 0.28
    assert built["minirl"].hyper.anchor == "recompute"
    assert built["drpo"].hyper.delta == 0.15 and built["drpo_reference"].hyper.delta == 12.5
    assert {b.name for b in built.values()} == {"pg_is", "cispo", "ppo_clip", "spo", "dppo_binary_tv",
                                               "dppo_binary_kl", "drpo"}


def test_conditions_are_trainer_overrides():
    assert {"fp32", "bf16", "fp8", "int8", "stale", "moe_bf16", "scale"} <= set(CONDITIONS)
    default = load_config(None, []).model_dump()
    for name, spec in CONDITIONS.items():
        assert spec["about"] and isinstance(spec["overrides"], list)
        config = load_config(None, spec["overrides"]).model_dump()  # every preset is a valid config
        assert (config == default) == (name == "fp32"), name
    assert load_config(None, CONDITIONS["stale"]["overrides"]).rollout.lag == 2
    with pytest.raises(ValueError, match="Valid conditions: fp32"):
        get_conditions(["fp4"])


def test_cli_lists_give_key_value_items_back_to_the_overrides():
    assert split_cli_lists(["drpo", "drpo:delta=0.3", "steps=60"], ["fp8", "eval.every=5"], ["seed_x=1"]) == (
        ["drpo", "drpo:delta=0.3"], ["fp8"], ["seed_x=1", "steps=60", "eval.every=5"])
    assert split_cli_lists(None, None, []) == (None, None, [])


# ----------------------------------------------------------------------------- the verdict, on chosen numbers
def stat(mean, std=0.0, n=3):
    return {"mean": mean, "std": std, "n": n}


def entry(final, std=0.0, seeds=3, collapsed=0, steps_to_target=None):
    return {"seeds": seeds, "final": stat(final, std, seeds), "collapsed": collapsed,
            "steps_to_target": steps_to_target}


def synthetic_results():
    methods = {"drpo": {"canonical": "drpo"}, "spo": {"canonical": "spo"}, "cispo": {"canonical": "cispo"},
               "ppo": {"canonical": "ppo_clip"}}
    return {"methods": methods, "conditions": {
        "easy": {"target": 0.5, "methods": {"drpo": entry(0.70, 0.01, steps_to_target=20),
                                            "spo": entry(0.60, 0.02, steps_to_target=40),
                                            "cispo": entry(0.695, 0.02, steps_to_target=20),
                                            "ppo": entry(0.70, 0.01)}},
        "hard": {"target": 0.5, "methods": {"drpo": entry(0.40, 0.05, collapsed=1),
                                            "spo": entry(0.55, 0.01, steps_to_target=60),
                                            "cispo": entry(0.10, 0.01, collapsed=3),
                                            "ppo": entry(0.38, 0.01)}},
    }}


def test_verdict_sentences_follow_the_numbers():
    out = verdict(synthetic_results())
    easy, hard = out["conditions"]["easy"], out["conditions"]["hard"]
    assert easy[0] == "easy: the highest final eval accuracy, 0.700, is shared by drpo and ppo (3 seeds)."
    assert easy[1] == "No method collapsed."
    assert easy[2].startswith("First to reach the target accuracy 0.500: cispo and drpo at step 20")
    assert easy[2].endswith("never reached by ppo.")
    # 0.100 > 0.01 + 0.02 is beyond the spread; 0.005 < 0.01 + 0.02 is within it; 0.700 vs 0.700 is a tie
    assert easy[3] == ("On final accuracy drpo beat spo by 0.100 (beyond the seed spread) and cispo by 0.005 "
                       "(within the seed spread); tied with ppo.")
    assert hard[0] == "hard: the highest final eval accuracy is spo's, 0.550 ± 0.010 (3 seeds)."
    assert hard[1] == "Collapsed: drpo (1/3 seeds) and cispo (3/3 seeds)."
    assert hard[2] == "First to reach the target accuracy 0.500: spo at step 60; never reached by drpo, cispo and ppo."
    # losses of DRPO are stated as plainly as its wins
    assert hard[3] == ("On final accuracy drpo beat cispo by 0.300 (beyond the seed spread) and ppo by 0.020 "
                       "(within the seed spread); lost to spo by 0.150 (beyond the seed spread).")
    assert out["overall"] == ["drpo had the highest final accuracy in 1 of 2 conditions (easy).",
                              "It did not win hard (best: spo, 0.150 ahead).",
                              "drpo collapsed in hard (1/3 seeds)."]


def test_verdict_with_one_seed_says_the_spread_is_unknown():
    results = synthetic_results()
    for cond in results["conditions"].values():
        for m in cond["methods"].values():
            m["seeds"], m["final"]["std"], m["final"]["n"] = 1, 0.0, 1
    out = verdict(results)
    assert "(1 seed)" in out["conditions"]["hard"][0]
    assert "lost to spo by 0.150 (one seed, spread unknown)" in out["conditions"]["hard"][3]


def test_verdict_without_a_drpo_method_compares_nothing_to_it():
    results = synthetic_results()
    del results["methods"]["drpo"]
    for cond in results["conditions"].values():
        del cond["methods"]["drpo"]
    out = verdict(results)
    assert out["overall"] == [] and all(len(s) == 3 for s in out["conditions"].values())


# ----------------------------------------------------------------------------- a tiny sweep end to end
def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in records]


def expected_row(records, target):
    """The table's numbers, recomputed here from metrics.jsonl (one seed: no std)."""
    evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    reached = [step for step, acc in evals if acc >= target - 1e-12]
    mismatch = [r["mismatch/abs_mean"] for r in records if "mismatch/abs_mean" in r]
    masked = [r["loss/masked_frac"] for r in records if "loss/masked_frac" in r]
    corrective = [r["loss/corrective_frac"] for r in records if "loss/corrective_frac" in r]
    time_s = sum(r["time/rollout_s"] + r["time/update_s"] for r in records if "time/rollout_s" in r)
    return {"seeds": "1", "start": f"{evals[0][1]:.3f}", "best": f"{max(a for _, a in evals):.3f}",
            "final": f"{evals[-1][1]:.3f}", "steps to target": str(reached[0]) if reached else "never",
            "peak mean abs(pi-mu)": f"{max(mismatch):.2e}", "masked %": f"{100 * sum(masked) / len(masked):.2f}",
            "corrective %": f"{100 * sum(corrective) / len(corrective):.2f}", "time (s)": f"{time_s:.1f}"}


def check_report(sweep, methods):
    report = (sweep / "report.md").read_text()
    assert TABLE_HEADER in report
    table = parse_table(report, "fp32")
    runs = {m: read_jsonl(sweep / "runs" / "fp32" / m / "seed0" / "metrics.jsonl") for m in methods}
    starts = [next(r["eval/accuracy"] for r in records if "eval/accuracy" in r) for records in runs.values()]
    target = sum(starts) / len(starts) + 0.15
    assert f"Target accuracy: {target:.3f}." in report
    for method, records in runs.items():
        row = table[method]
        assert {k: row[k] for k in expected_row(records, target)} == expected_row(records, target), method
        assert row["collapsed"] == ("1/1" if detect_collapse(records).collapsed else "no"), method
    finals = {m: [r["eval/accuracy"] for r in records if "eval/accuracy" in r][-1] for m, records in runs.items()}
    return report, table, finals


def test_tiny_sweep_report_reuse_and_resume(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["compare", "--methods", "drpo", "pg_is", "--seeds", "1", "--conditions", "fp32", "--workers", "2",
            "--out", str(sweep), *TINY]
    assert main(args) == 0

    for name in ("report.md", "results.json", "sweep.yaml", "figures/fp32_curves.png", "figures/fp32_trust_region.png",
                 "figures/final_accuracy.png", "figures/weights.png"):
        assert (sweep / name).is_file() and (sweep / name).stat().st_size > 0, name
    for method in ("drpo", "pg_is"):
        run = sweep / "runs" / "fp32" / method / "seed0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 4 and not summary["interrupted"]
        assert load_config(run / "config.yaml").loss.name == method
    report, table, finals = check_report(sweep, ["drpo", "pg_is"])

    # a worker's run is the run `drpo train` makes with the same overrides (same base model, same numbers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        Trainer(load_config(None, [*TINY, "loss=drpo", "loss.delta=0.15", "seed=0", f"out={tmp_path / 'direct'}"])).train()
    finally:
        torch.set_num_threads(threads)
    assert comparable(read_jsonl(tmp_path / "direct" / "metrics.jsonl")) == comparable(
        read_jsonl(sweep / "runs" / "fp32" / "drpo" / "seed0" / "metrics.jsonl"))

    # the verdict names the method(s) with the highest final accuracy in the runs' own metrics
    results = json.loads((sweep / "results.json").read_text())
    first = results["verdict"]["conditions"]["fp32"][0]
    best = max(finals.values())
    winners = [m for m, v in finals.items() if best - v < 5e-4]
    assert (f"is {winners[0]}'s" in first) if len(winners) == 1 else ("shared by drpo and pg_is" in first)
    assert first in report

    # a second call reuses the finished run and resumes the one marked interrupted (no retraining)
    kept = sweep / "runs" / "fp32" / "drpo" / "seed0"
    before = {p.name: p.stat().st_mtime_ns for p in (kept / "metrics.jsonl", kept / "checkpoints" / "latest.pt")}
    marked = sweep / "runs" / "fp32" / "pg_is" / "seed0" / "summary.json"
    summary = json.loads(marked.read_text())
    marked.write_text(json.dumps({**summary, "interrupted": True}))
    outcome = run_sweep(sweep, ["drpo", "pg_is"], 1, ["fp32"], TINY, workers=1)
    assert outcome.reused == ["fp32/drpo/seed0"] and outcome.resumed == ["fp32/pg_is/seed0"]
    assert outcome.started == [] and outcome.exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (kept / "metrics.jsonl", kept / "checkpoints" / "latest.pt")} == before
    assert not json.loads(marked.read_text())["interrupted"]
    check_report(sweep, ["drpo", "pg_is"])

    # a different config in the same directory is an error, not a silent reuse
    with pytest.raises(ValueError, match=r"(?s)different config.*eval.prompts"):
        run_sweep(sweep, ["drpo", "pg_is"], 1, ["fp32"], [*TINY, "eval.prompts=8"], workers=1)
    with pytest.raises(ValueError, match="compare sets"):
        run_sweep(sweep, ["drpo"], 1, ["fp32"], [*TINY, "loss.delta=0.3"], workers=1)

    # `drpo report` rebuilds from the files alone: change pg_is's metrics and the table and verdict follow
    metrics = sweep / "runs" / "fp32" / "pg_is" / "seed0" / "metrics.jsonl"
    records = read_jsonl(metrics)
    evals = [r for r in records if "eval/accuracy" in r]
    evals[0]["eval/accuracy"], evals[1]["eval/accuracy"], evals[-1]["eval/accuracy"] = 0.2, 0.9, 0.1
    for r in records[1:]:
        r["mismatch/abs_mean"] = 1e-3 if r["step"] < 3 else 0.5
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.utime(metrics)
    assert main(["report", str(sweep)]) == 0
    report, table, finals = check_report(sweep, ["drpo", "pg_is"])
    assert table["pg_is"]["collapsed"] == "1/1" and "pg_is, seed 0: eval accuracy fell from its best 0.900" in report
    sentences = json.loads((sweep / "results.json").read_text())["verdict"]["conditions"]["fp32"]
    assert "Collapsed: pg_is (1/1 seeds)." in sentences
    assert main(["report", str(sweep), "--target", "0.05"]) == 0
    assert "Target accuracy for *steps to target*: fixed eval accuracy 0.050" in (sweep / "report.md").read_text()
    gap = finals["drpo"] - 0.1
    if gap >= 5e-4:
        assert f"drpo beat pg_is by {gap:.3f} (one seed, spread unknown)" in sentences[-1]
    elif gap <= -5e-4:
        assert f"drpo lost to pg_is by {-gap:.3f} (one seed, spread unknown)" in sentences[-1]


def test_a_base_model_that_missed_its_target_is_flagged_not_ranked():
    """The issue's case: finals 0.003 against 0.000 from a base model at 0.004 of a 0.3 target."""
    results = synthetic_results()
    results["conditions"]["hard"]["weak_base_seeds"] = [1]
    out = verdict(results)
    assert out["conditions"]["hard"] == [
        "hard: not judged. The base model of seed 1 missed its warm-up target (summary.json: "
        "base_model.missed_target), so RL from it had little or no reward signal and the highest final accuracy "
        "would rank noise; raise warmup.steps or use an easier task."]
    assert out["overall"] == ["drpo had the highest final accuracy in 1 of 1 condition (easy).", "drpo never collapsed."]


def test_summarize_reads_the_flag_from_summary_json(tmp_path):
    from drpo.experiments.report import Run, summarize

    grid = {"methods": {"drpo": {"canonical": "drpo"}}, "seeds": [0, 1],
            "conditions": {"fp32": {"about": "", "overrides": []}}}
    records = [{"step": 0, "eval/accuracy": 0.004}, {"step": 4, "eval/accuracy": 0.003}]
    runs = [Run("fp32", "drpo", seed, tmp_path, records, {"base_model": {"missed_target": seed == 1}})
            for seed in (0, 1)]
    results = summarize(grid, runs)
    assert results["conditions"]["fp32"]["weak_base_seeds"] == [1]
    assert results["verdict"]["conditions"]["fp32"][0].startswith("fp32: not judged. The base model of seed 1")
