"""`drpo compare` and its report: method specs, condition presets, the generated verdict, and a tiny sweep
end to end (its table checked against the runs' metrics.jsonl, its figures and archive, reuse and resume),
one sweep shared by the tests that read it."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from drpo.cli import main
from drpo.config import load_config
from drpo.lab.archive import read_archive
from drpo.lab.collapse import detect_collapse
from drpo.lab.compare import run_sweep, split_cli_lists
from drpo.lab.conditions import CONDITIONS, SWEEP_OVERRIDES, get_conditions
from drpo.lab.methods import METHODS, parse_method, parse_methods
from drpo.lab.outcomes import accuracy_area, late_accuracy
from drpo.lab.report import TABLE_HEADER, parse_table
from drpo.lab.results import hyper_sweeps, summarize
from drpo.lab.runs import Run
from drpo.losses import DRPO_DELTA
from drpo.metrics import TIMING_PREFIXES
from drpo.trainer import Trainer

# not configs.CHEAP: a sweep's own settings (4 steps, an evaluation every 2), every run of it starting from one
# tiny base model warmed up for 40 steps (cached for the session)
TINY = ["steps=4", "rollout.prompts=4", "rollout.group_size=4", "eval.every=2", "eval.prompts=16", "eval.samples=1",
        "warmup.steps=40", "warmup.target_accuracy=null", "model=tiny", "tensorboard=false"]


# ----------------------------------------------------------------------------- methods and conditions
def test_method_specs():
    drpo = parse_method("drpo")
    assert (drpo.label, drpo.loss, drpo.hyper) == ("drpo", "drpo", {"delta": DRPO_DELTA})
    custom = parse_method("drpo:delta=0.3")
    assert custom.label == "drpo:delta=0.3" and custom.slug == "drpo_delta=0.3"
    assert custom.overrides() == ["loss=drpo", "loss.delta=0.3"]
    assert parse_method("drpo_reference").build().hyper.delta == 12.5
    minirl = parse_method("minirl")
    assert minirl.canonical == "decoupled_ppo" and minirl.build().hyper.anchor == "recompute"
    assert parse_method("ppo_clip_recompute").canonical == "ppo_clip"
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


ADAPTIVE = "drpo:adaptive_delta.enabled=true,adaptive_delta.quantile=0.999,adaptive_delta.multiple=2"


def test_a_method_may_carry_adaptive_delta_settings(tmp_path):
    """They reach each job's config after the sweep's own, sweep.yaml and the report's method table; the method is
    no point of a delta sweep (its delta moves) and gets no weight curve; any other trainer key is refused."""
    from drpo.lab.figures import weight_figure_losses
    from drpo.lab.jobs import plan, write_grid
    from drpo.lab.report import render_markdown

    method = parse_method(ADAPTIVE)
    assert (method.label, method.loss, method.hyper) == (ADAPTIVE, "drpo", {"delta": DRPO_DELTA})
    assert method.trainer == {"adaptive_delta.enabled": True, "adaptive_delta.quantile": 0.999,
                              "adaptive_delta.multiple": 2}
    conditions = get_conditions(["stale"])
    (job,) = plan(tmp_path, [method], [0], conditions, ["adaptive_delta.multiple=5", "adaptive_delta.ema=0.5"])
    adaptive = load_config(None, job.overrides).adaptive_delta
    assert (adaptive.enabled, adaptive.quantile, adaptive.multiple, adaptive.ema) == (True, 0.999, 2, 0.5)
    assert not load_config(None, parse_method("drpo").overrides()).adaptive_delta.enabled

    methods = parse_methods(["drpo:delta=0.15", "drpo", "drpo:delta=0.5", ADAPTIVE])
    grid = write_grid(tmp_path, methods, [0], conditions, [], None)
    assert "trainer" not in grid["methods"]["drpo"] and grid["methods"][ADAPTIVE]["trainer"] == method.trainer
    assert yaml.safe_load((tmp_path / "sweep.yaml").read_text())["methods"][ADAPTIVE]["trainer"] == method.trainer
    (sweep,) = hyper_sweeps(grid["methods"])
    assert [p["label"] for p in sweep["points"]] == ["drpo:delta=0.15", "drpo", "drpo:delta=0.5"]
    drawn, not_drawn = weight_figure_losses(grid["methods"])
    assert drawn == ["drpo"] and ADAPTIVE in not_drawn
    report = render_markdown(tmp_path, summarize(grid, []), drawn, not_drawn)
    assert (f"| {ADAPTIVE} | drpo | delta={DRPO_DELTA}; trainer: adaptive_delta.enabled=True, "
            "adaptive_delta.quantile=0.999, adaptive_delta.multiple=2 |") in report
    assert f"| drpo | drpo | delta={DRPO_DELTA} |" in report and "or a boundary the trainer sets" in report

    with pytest.raises(ValueError, match=r"'optim.lr' is a trainer setting; a method may carry only adaptive_delta"):
        parse_method("drpo:optim.lr=0.1")
    with pytest.raises(ValueError, match=r"unknown key 'adaptive_delta.multipel'.*multiple"):
        parse_method("drpo:adaptive_delta.multipel=2")
    with pytest.raises(ValueError, match="loss=ppo_clip has none"):
        parse_method("ppo_clip:adaptive_delta.enabled=true")


def test_default_methods_are_the_issue_list():
    built = {label: parse_method(label).build() for label in METHODS}
    assert built["ppo_clip_higher"].hyper.eps_low == 0.2 and built["ppo_clip_higher"].hyper.eps_high == 0.28
    assert built["minirl"].hyper.anchor == "recompute"
    assert built["drpo"].hyper.delta == DRPO_DELTA and built["drpo_reference"].hyper.delta == 12.5
    assert built["ppo_tis"].hyper.is_high == 2.0 and built["ppo_mis"].hyper.mode == "mask"
    assert {b.name for b in built.values()} == {"pg_is", "cispo", "ppo_clip", "spo", "dppo_binary_tv",
                                               "dppo_binary_kl", "drpo", "decoupled_ppo", "gspo"}


def test_conditions_are_trainer_overrides():
    assert {"fp32", "bf16", "fp8", "int8", "stale", "moe_bf16", "scale"} <= set(CONDITIONS)
    on_policy = load_config(None, ["rollout.precision=fp32", "updates_per_batch=1", "rollout.lag=0"]).model_dump()
    for name, spec in CONDITIONS.items():
        assert spec["about"] and isinstance(spec["overrides"], list)
        # every preset is a valid config (llama.cpp's on a llama-architecture model, which they need)
        config = load_config(None, [*spec["overrides"], *(["model.arch=llama"] if spec.get("opt_in") else [])]
                             ).model_dump()
        assert (config == on_policy) == (name == "fp32"), name
        # each sets the off-policy knobs itself: the trainer's off-policy default never leaks into a condition
        assert {item.partition("=")[0] for item in spec["overrides"]} >= {
            "rollout.precision", "updates_per_batch", "rollout.lag"}, name
    stale = load_config(None, CONDITIONS["stale"]["overrides"])
    assert (stale.rollout.lag, stale.updates_per_batch, stale.rollout.precision) == (2, 4, "fp32")
    assert load_config(None, CONDITIONS["bf16"]["overrides"]).updates_per_batch == 1
    with pytest.raises(ValueError, match="Valid conditions: fp32"):
        get_conditions(["fp4"])
    # the real-engine conditions are opt-in: the default list runs on any built-in model without extras
    assert not any(spec.get("opt_in") for spec in get_conditions(None).values())
    assert get_conditions(["llamacpp_q4_stale"])["llamacpp_q4_stale"]["opt_in"]


def test_the_sweep_evaluates_on_enough_held_out_prompts():
    """One eval's standard error sqrt(p(1-p)/n) <= 0.015 at any accuracy, on prompts the warm-up never probes."""

    config = load_config(None, [*CONDITIONS["stale"]["overrides"], *SWEEP_OVERRIDES])
    task = config.task.build(config.seed)
    assert config.eval.prompts <= len(task.eval) and 0.5 / config.eval.prompts ** 0.5 <= 0.015
    probe = {ex.prompt for ex in task.train[:config.warmup.probe_prompts]}
    assert not probe & {ex.prompt for ex in task.eval[:config.eval.prompts]}
    assert config.rollout.precision == "fp32" and config.updates_per_batch == 4  # the condition's, untouched


def test_cli_lists_give_key_value_items_back_to_the_overrides():
    assert split_cli_lists(["drpo", "drpo:delta=0.3", "steps=60"], ["fp8", "eval.every=5"], ["seed_x=1"]) == (
        ["drpo", "drpo:delta=0.3"], ["fp8"], ["seed_x=1", "steps=60", "eval.every=5"])
    assert split_cli_lists(None, None, []) == (None, None, [])


def test_a_finished_run_made_before_a_config_field_existed_is_reused(tmp_path):
    """A sweep resumes across versions: a key missing from a run's config.yaml counts as its default, while a
    real difference (or a new field set away from its default) still refuses to reuse the run."""
    from drpo.lab.jobs import _action

    config = load_config(None, [*TINY, "loss=drpo", f"out={tmp_path}"])
    saved = config.model_dump(mode="json")
    del saved["model"]["autocast"], saved["rollout"]["ignore_eos"]  # fields added after the run was made
    files = {"config.yaml": yaml.safe_dump(saved),
             "summary.json": json.dumps({"interrupted": False, "steps": config.steps})}
    assert _action(files, False, config) == ("done", None)
    action, conflict = _action(files, False, load_config(None, [*TINY, "loss=drpo", "rollout.ignore_eos=true"]))
    assert action == "new" and conflict == "differs in rollout.ignore_eos"
    action, conflict = _action(files, False, load_config(None, [*TINY, "loss=drpo", "eval.prompts=8"]))
    assert conflict == "differs in eval.prompts"


def _report_threads(path: str) -> None:
    """A worker target: what a run would compute with (torch's threads, the OpenMP setting its children inherit)."""
    from drpo.lab.workers import _child_setup

    _child_setup(None)
    Path(path).write_text(json.dumps({"torch": torch.get_num_threads(), "omp": os.environ["OMP_NUM_THREADS"],
                                      "mkl": os.environ["MKL_NUM_THREADS"]}))


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_each_worker_runs_the_threads_it_is_given(tmp_path, threads):
    """`drpo compare --workers 1 --threads 1` leaves the other cores free: the worker's torch and OpenMP threads."""
    from rich.console import Console

    from drpo.lab.workers import THREAD_ENV, run_processes

    parent_env = {key: os.environ.get(key) for key in THREAD_ENV}
    probe = tmp_path / "threads.json"
    codes = run_processes([("probe", _report_threads, (str(probe),), None, None)], 1, Console(quiet=True), threads)
    assert codes == {"probe": 0}
    assert json.loads(probe.read_text()) == {"torch": threads, "omp": str(threads), "mkl": str(threads)}
    assert {key: os.environ.get(key) for key in THREAD_ENV} == parent_env  # the parent's own setting is restored


# ----------------------------------------------------------------------------- the verdict, on constructed runs
METHOD_SPECS = {"drpo": {"loss": "drpo", "hyper": {"delta": 0.15}, "canonical": "drpo"},
                "tv": {"loss": "dppo_binary_tv", "hyper": {}, "canonical": "dppo_binary_tv"},
                "pg": {"loss": "pg_is", "hyper": {}, "canonical": "pg_is"}}
# condition a: tv - drpo = 0.10, 0.12, 0.11 (separable); pg - drpo = 0.10, -0.05, 0.02 (not); pg - tv not either
# condition b: drpo ahead of tv by 0.2 on every seed and of pg by 0.19, 0.21, 0.18: drpo wins
FINALS = {"a": {"drpo": [0.40, 0.30, 0.50], "tv": [0.50, 0.42, 0.61], "pg": [0.50, 0.25, 0.52]},
          "b": {"drpo": [0.60, 0.50, 0.70], "tv": [0.40, 0.30, 0.50], "pg": [0.41, 0.29, 0.52]}}


def constructed_runs(finals=FINALS, start=0.3, summary=None):
    """Runs whose eval accuracy is `start` at step 0, then the final value at steps 10 and 20."""
    return [Run(condition, method, seed, Path("."), [{"step": 0, "eval/accuracy": start},
                                                     {"step": 10, "eval/accuracy": final},
                                                     {"step": 20, "eval/accuracy": final}], dict(summary or {}))
            for condition, by_method in finals.items() for method, values in by_method.items()
            for seed, final in enumerate(values)]


def constructed_grid(finals=FINALS, seeds=(0, 1, 2)):
    return {"methods": {m: METHOD_SPECS[m] for m in next(iter(finals.values()))}, "seeds": list(seeds),
            "conditions": {c: {"about": "", "overrides": []} for c in finals}}


def test_verdict_from_paired_intervals_on_constructed_runs():
    results = summarize(constructed_grid(), constructed_runs())
    assert results["baseline"] == "drpo"
    a, b = results["verdict"]["conditions"]["a"], results["verdict"]["conditions"]["b"]
    assert a[0] == ("a: highest mean late accuracy (mean eval accuracy over the last 20% of steps): tv, 0.510 ± 0.095 (3 seeds; final evaluation alone: "
                    "0.510 ± 0.095); not separable from it "
                    "(paired 95% t interval of the difference contains 0, or one seed): pg. No method wins.")
    assert a[1] == "No method collapsed."
    assert a[2] == ("First to reach the target accuracy 0.450 (seed-mean curve): tv at step 10; never reached by drpo "
                    "and pg.")
    # hand: mean 0.11 -+ 4.303 * 0.01 / sqrt(3); mean 0.0233 -+ 4.303 * 0.0751 / sqrt(3)
    # Holm over the 2 comparisons: tv's t = 0.11 / (0.01 / sqrt 3) = 19.05 on 2 df, p = 1 - t / sqrt(t^2 + 2)
    # = 0.00275, the smaller of the two, so adjusted 2 x 0.00275 = 0.0055
    assert a[3] == ("Against drpo (late accuracy, method - drpo, paired over seeds, 95% t interval): better: "
                    "tv +0.110 [+0.085, +0.135]; not separable: pg +0.023 [-0.163, +0.210]. Corrected for the 2 "
                    "comparisons against drpo (Holm, familywise 95%): still separated: tv (adjusted p 0.005).")
    tv = results["conditions"]["a"]["methods"]["tv"]["vs_baseline"]
    assert tv["p"] == pytest.approx(1 - 19.0526 / math.sqrt(19.0526 ** 2 + 2), rel=1e-4)
    assert tv["p_holm"] == pytest.approx(2 * tv["p"])
    assert b[0] == ("b: highest mean late accuracy (mean eval accuracy over the last 20% of steps): drpo, 0.600 ± 0.100 (3 seeds; final evaluation alone: "
                    "0.600 ± 0.100), better than every other "
                    "method (paired 95% t intervals): drpo wins.")
    assert b[3] == ("Against drpo (late accuracy, method - drpo, paired over seeds, 95% t interval): worse: "
                    "tv -0.200 [-0.200, -0.200] and pg -0.193 [-0.231, -0.155]. Corrected for the 2 comparisons "
                    "against drpo (Holm, familywise 95%): still separated: tv (adjusted p < 0.001) and pg "
                    "(adjusted p 0.002).")
    assert results["verdict"]["overall"] == [
        "drpo won 1 of 2 conditions (b) (better than every other method on late accuracy).",
        "It was separably behind the highest mean in a (best: tv, ahead by +0.110 [+0.085, +0.135]).",
        "drpo never collapsed."]
    tv = results["conditions"]["a"]["methods"]["tv"]["vs_baseline"]
    assert tv["verdict"] == "better" and tv["seeds"] == [0, 1, 2]


def test_a_gap_larger_than_any_fixed_threshold_is_not_separable_when_the_seeds_disagree():
    """The issue's stale_strong case: DRPO 0.297 / 0.469 / 0.266 against 0.391 / 0.398 / 0.254 is noise."""
    finals = {"stale_strong": {"drpo": [0.297, 0.469, 0.266], "tv": [0.391, 0.398, 0.254], "pg": [0.1, 0.1, 0.1]}}
    results = summarize(constructed_grid(finals), constructed_runs(finals, start=0.1))
    sentences = results["verdict"]["conditions"]["stale_strong"]
    assert sentences[0] == ("stale_strong: highest mean late accuracy (mean eval accuracy over the last 20% of steps): tv, 0.348 ± 0.081 (3 seeds; "
                            "final evaluation alone: 0.348 ± 0.081); not "
                            "separable from it (paired 95% t interval of the difference contains 0, or one seed): "
                            "drpo. No method wins.")
    # d = 0.094, -0.071, -0.012: mean 0.0037, sd 0.0836, half-width 4.303 * 0.0836 / sqrt(3) = 0.2076
    # and with 3 seeds this spread leaves even pg's -0.244 inside its interval (t with 2 degrees of freedom: 4.303)
    assert sentences[-1].endswith("not separable: tv +0.004 [-0.204, +0.211] and pg -0.244 [-0.516, +0.028].")


def test_outcomes_by_hand():
    curve = [(0, 0.3), (20, 0.5), (40, 0.4), (60, 0.4), (80, 0.2), (100, 0.6)]
    assert late_accuracy(curve) == pytest.approx(0.4)  # steps 80 and 100: the last 20% of 100 steps
    assert late_accuracy([*curve[:4], (70, 0.1), (80, 0.2), (90, 0.3), (100, 0.6)]) == pytest.approx(1.1 / 3)
    # trapezoids: 20 * (0.8 + 0.9 + 0.8 + 0.6 + 0.8) / 2 = 39, over 100 steps
    assert accuracy_area(curve) == pytest.approx(0.39)
    assert late_accuracy([]) is None and accuracy_area([(5, 0.7)]) == 0.7


def test_the_verdict_reads_late_accuracy_not_the_last_evaluation():
    """drpo ends higher on every seed but sat lower over the last 20% of steps: the verdict follows the latter."""
    def run(method, seed, at_80, at_100):
        return Run("c", method, seed, Path("."), [{"step": 0, "eval/accuracy": 0.3}, {"step": 80, "eval/accuracy": at_80},
                                                   {"step": 100, "eval/accuracy": at_100}], {})
    runs = [run("drpo", s, 0.2, 0.5 + 0.01 * s) for s in range(3)] + [run("tv", s, 0.5, 0.45 + 0.02 * s) for s in range(3)]
    grid = {"methods": {m: METHOD_SPECS[m] for m in ("drpo", "tv")}, "seeds": [0, 1, 2],
            "conditions": {"c": {"about": "", "overrides": []}}}
    tv = summarize(grid, runs)["conditions"]["c"]["methods"]["tv"]
    assert tv["vs_baseline"]["verdict"] == "better" and tv["vs_baseline"]["mean"] == pytest.approx(0.13)
    assert tv["final_vs_baseline"]["verdict"] == "worse" and tv["final_vs_baseline"]["mean"] == pytest.approx(-0.04)


def test_verdict_with_one_seed_separates_nothing():
    finals = {c: {m: v[:1] for m, v in by_method.items()} for c, by_method in FINALS.items()}
    results = summarize(constructed_grid(finals, seeds=[0]), constructed_runs(finals))
    b = results["verdict"]["conditions"]["b"]
    assert b[0].endswith("(1 seed; final evaluation alone: 0.600); not separable from it (paired 95% t interval of the difference contains 0, or "
                         "one seed): tv and pg. No method wins.")
    assert "tv -0.200 (1 paired seed, no interval)" in b[3]


def test_verdict_without_the_baseline_loss_names_another_baseline():
    finals = {c: {m: v for m, v in by_method.items() if m != "drpo"} for c, by_method in FINALS.items()}
    results = summarize(constructed_grid(finals), constructed_runs(finals))
    assert results["baseline"] == "tv"  # the first method when no drpo method runs
    assert results["verdict"]["conditions"]["b"][-1].startswith("Against tv")
    with pytest.raises(ValueError, match="baseline 'spo' is not a method of this sweep: tv, pg"):
        summarize(constructed_grid(finals), constructed_runs(finals), baseline="spo")


def test_a_condition_with_a_method_still_unrun_names_no_winner_and_is_not_counted():
    """A sweep read while it runs: in condition b, pg has no finished run yet, so drpo's lead over tv is not a win."""
    runs = [run for run in constructed_runs() if not (run.condition == "b" and run.method == "pg")]
    out = summarize(constructed_grid(), runs)["verdict"]
    assert out["conditions"]["b"] == [
        "b: highest mean late accuracy (mean eval accuracy over the last 20% of steps): drpo, 0.600 ± 0.100 (3 seeds; "
        "final evaluation alone: 0.600 ± 0.100) among the methods with finished runs; none yet for pg, so no method is "
        "judged against the others here until they finish."]
    assert out["overall"][0] == "drpo won 0 of 1 condition (better than every other method on late accuracy)."


def test_a_condition_with_seeds_still_running_is_read_as_interim_and_not_counted():
    """Every method has finished seeds 0 and 1 of 3 in condition b: the sentences say interim, the summary skips b."""
    runs = [run for run in constructed_runs() if not (run.condition == "b" and run.seed == 2)]
    out = summarize(constructed_grid(), runs)["verdict"]
    assert out["conditions"]["b"][0] == (
        "b: interim, 6 of 9 planned runs finished. The sentences below read the seeds finished so far; the sweep's "
        "verdict waits for the rest, and this condition is not counted in the overall summary.")
    assert out["conditions"]["b"][1].startswith("b: highest mean late accuracy") and "(2 seeds;" in out["conditions"]["b"][1]
    assert out["conditions"]["a"][0].startswith("a: highest mean")  # complete: judged as before
    assert out["overall"][0] == "drpo won 0 of 1 condition (better than every other method on late accuracy)."


def test_a_base_model_that_missed_its_target_is_flagged_not_ranked():
    """The issue's case: finals 0.003 against 0.000 from a base model at 0.004 of a 0.3 target."""
    runs = constructed_runs()
    for run in runs:
        if run.condition == "a" and run.seed == 1:
            run.summary = {"base_model": {"missed_target": True}}
    out = summarize(constructed_grid(), runs)["verdict"]
    assert out["conditions"]["a"] == [
        "a: not judged. The base model of seed 1 missed its warm-up target (summary.json: "
        "base_model.missed_target), so RL from it had little or no reward signal and the highest late accuracy "
        "would rank noise; raise warmup.steps or use an easier task."]
    assert out["overall"][0] == "drpo won 1 of 1 condition (b) (better than every other method on late accuracy)."


def test_each_swept_loss_at_its_best_setting_is_paired_against_the_first():
    """Two losses each swept over 3 values: the best of each (highest mean late accuracy) and their paired difference."""
    specs = {**{f"drpo{d}": {"loss": "drpo", "hyper": {"delta": d}, "canonical": "drpo"} for d in (0.05, 0.15, 0.5)},
             **{f"tv{d}": {"loss": "dppo_binary_tv", "hyper": {"delta_low": d, "delta_high": d},
                           "canonical": "dppo_binary_tv"} for d in (0.1, 0.2, 0.3)}}
    finals = {"c": {"drpo0.05": [0.3, 0.3, 0.3], "drpo0.15": [0.40, 0.30, 0.50], "drpo0.5": [0.35, 0.3, 0.4],
                    "tv0.1": [0.2, 0.2, 0.2], "tv0.2": [0.50, 0.42, 0.61], "tv0.3": [0.45, 0.4, 0.5]}}
    grid = {"methods": specs, "seeds": [0, 1, 2], "conditions": {"c": {"about": "", "overrides": []}}}
    results = summarize(grid, constructed_runs(finals))
    first, second = results["conditions"]["c"]["sweep_best"]
    assert (first["loss"], first["value"], first["vs_first"]) == ("drpo", 0.15, None)
    assert (second["loss"], second["parameter"], second["value"]) == ("dppo_binary_tv", "delta_low=delta_high", 0.2)
    # the pairs of the verdict test's condition a: +0.110 [+0.085, +0.135]
    d = second["vs_first"]
    assert d["verdict"] == "better" and d["mean"] == pytest.approx(0.11)
    assert (d["low"], d["high"]) == pytest.approx((0.11 - 4.303 * 0.01 / 3 ** 0.5, 0.11 + 4.303 * 0.01 / 3 ** 0.5),
                                                   abs=1e-4)
    from drpo.lab.report import best_table
    rows = best_table(results, 95)  # 0.51 -+ 4.303 * 0.0954 / sqrt(3)
    assert "| c | drpo | delta=0.15 | 0.400 [0.152, 0.648] | reference |" in rows
    assert "| c | dppo_binary_tv | delta_low=delta_high=0.2 | 0.510 [0.273, 0.747] | +0.110 [+0.085, +0.135] better |" in rows


def test_hyper_sweeps_are_found_in_the_methods():
    methods = {label: {**parse_method(label).to_dict(), "canonical": parse_method(label).canonical}
               for label in ("drpo", "drpo:delta=0.05", "drpo:delta=0.15", "drpo_reference", "pg_is",
                             "dppo_binary_tv", "dppo_binary_tv:delta_low=0.3,delta_high=0.3",
                             "dppo_binary_tv:delta_low=0.05,delta_high=0.05", "ppo_clip_higher", "ppo_clip_recompute")}
    sweeps = {s["loss"]: s for s in hyper_sweeps(methods)}
    assert set(sweeps) == {"drpo", "dppo_binary_tv"}  # ppo_clip's two differ in the anchor: no sweep
    assert [(p["value"], p["label"]) for p in sweeps["drpo"]["points"]] == [
        (0.05, "drpo:delta=0.05"), (0.15, "drpo:delta=0.15"), (DRPO_DELTA, "drpo"), (12.5, "drpo_reference")]
    assert sweeps["dppo_binary_tv"]["parameter"] == "delta_low=delta_high"
    assert [p["value"] for p in sweeps["dppo_binary_tv"]["points"]] == [0.05, 0.15, 0.3]
    uneven = {**methods, "dppo_binary_tv:delta_low=0.1": {"loss": "dppo_binary_tv", "hyper": {"delta_low": 0.1}}}
    assert {s["loss"] for s in hyper_sweeps(uneven)} == {"drpo"}


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
    amplified = [r["loss/amplified_frac"] for r in records if "loss/amplified_frac" in r]
    time_s = sum(r["time/rollout_s"] + r["time/update_s"] for r in records if "time/rollout_s" in r)
    late = [acc for step, acc in evals if step >= 0.8 * evals[-1][0]]  # the last 20% of steps
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(evals, evals[1:], strict=False))
    area /= evals[-1][0]
    return {"seeds": "1", "late": f"{sum(late) / len(late):.3f}", "area": f"{area:.3f}",
            "start": f"{evals[0][1]:.3f}", "best": f"{max(a for _, a in evals):.3f}",
            "final": f"{evals[-1][1]:.3f}", "steps to target": str(reached[0]) if reached else "never",
            "peak mean abs(pi-mu)": f"{max(mismatch):.2e}", "masked %": f"{100 * sum(masked) / len(masked):.2f}",
            "corrective %": f"{100 * sum(corrective) / len(corrective):.2f}",
            "amplified %": f"{100 * sum(amplified) / len(amplified):.2f}", "time (s)": f"{time_s:.1f}"}


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


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """drpo and pg_is, 1 seed, fp32, 2 workers, through the CLI: made once, read by the tests below (those that
    change it work on a copy)."""
    sweep = tmp_path_factory.mktemp("tiny") / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRPO_CACHE", str(tmp_path_factory.getbasetemp() / "drpo-cache"))
        assert main(["compare", "--methods", "drpo", "pg_is", "--seeds", "1", "--conditions", "fp32", "--workers",
                     "2", "--out", str(sweep), *TINY]) == 0
    return sweep


@pytest.fixture
def sweep_copy(tiny_sweep, tmp_path):
    return Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))


@pytest.mark.slow
def test_a_sweep_writes_its_runs_report_and_archive(tiny_sweep):
    for name in ("report.md", "results.json", "sweep.yaml", "figures/fp32_curves.png", "figures/fp32_trust_region.png",
                 "figures/late_accuracy.png", "figures/weights.png", "runs.tar.xz"):
        assert (tiny_sweep / name).is_file() and (tiny_sweep / name).stat().st_size > 0, name
    archived = read_archive(tiny_sweep / "runs.tar.xz")
    for method in ("drpo", "pg_is"):
        run = tiny_sweep / "runs" / "fp32" / method / "seed0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 4 and not summary["interrupted"]
        assert 0.1 < summary["memory/peak_rss_gb"] < 16  # the worker's own peak: torch and a tiny model
        assert load_config(run / "config.yaml").loss.name == method
        for name in ("config.yaml", "metrics.jsonl", "summary.json"):  # the run's files, byte for byte
            assert archived[f"runs/fp32/{method}/seed0/{name}"] == (run / name).read_bytes()
    check_report(tiny_sweep, ["drpo", "pg_is"])


@pytest.mark.slow
def test_a_worker_run_is_the_run_drpo_train_makes(tiny_sweep, tmp_path):
    """Same base model, same numbers as `drpo train` with the same overrides."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux reports KiB)
    try:
        Trainer(load_config(None, [*CONDITIONS["fp32"]["overrides"], *SWEEP_OVERRIDES, *TINY, "loss=drpo",
                                   f"loss.delta={DRPO_DELTA}", "seed=0", f"out={tmp_path / 'direct'}"])).train()
    finally:
        torch.set_num_threads(threads)
    # summary.json logs the peak resident memory of the process that ran it (which only grows)
    peak = json.loads((tmp_path / "direct" / "summary.json").read_text())["memory/peak_rss_gb"]
    assert peak_before - 1e-3 <= peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 + 1e-3
    assert comparable(read_jsonl(tmp_path / "direct" / "metrics.jsonl")) == comparable(
        read_jsonl(tiny_sweep / "runs" / "fp32" / "drpo" / "seed0" / "metrics.jsonl"))


@pytest.mark.slow
def test_the_verdict_names_the_highest_late_accuracy_and_one_seed_separates_nothing(tiny_sweep):
    report, _, _ = check_report(tiny_sweep, ["drpo", "pg_is"])
    results = json.loads((tiny_sweep / "results.json").read_text())
    first = results["verdict"]["conditions"]["fp32"][0]
    lates = {m: row["late"]["mean"] for m, row in results["conditions"]["fp32"]["methods"].items()}
    leader = max(lates, key=lates.get)
    tied = [m for m in lates if m != leader and lates[m] == lates[leader]]  # an exact tie is named as one
    named = f"{leader} (tied with {' and '.join(tied)})" if tied else leader
    assert f"highest mean late accuracy (mean eval accuracy over the last 20% of steps): {named}, " in first
    assert first.endswith("No method wins.") and first in report


@pytest.mark.slow
def test_a_second_call_reuses_finished_runs_and_resumes_interrupted_ones(sweep_copy):
    kept = sweep_copy / "runs" / "fp32" / "drpo" / "seed0"
    before = {p.name: p.stat().st_mtime_ns for p in (kept / "metrics.jsonl", kept / "checkpoints" / "latest.pt")}
    marked = sweep_copy / "runs" / "fp32" / "pg_is" / "seed0" / "summary.json"
    marked.write_text(json.dumps({**json.loads(marked.read_text()), "interrupted": True}))
    outcome = run_sweep(sweep_copy, ["drpo", "pg_is"], 1, ["fp32"], TINY, workers=1)
    assert outcome.reused == ["fp32/drpo/seed0"] and outcome.resumed == ["fp32/pg_is/seed0"]
    assert outcome.started == [] and outcome.exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (kept / "metrics.jsonl", kept / "checkpoints" / "latest.pt")} == before
    assert not json.loads(marked.read_text())["interrupted"]
    check_report(sweep_copy, ["drpo", "pg_is"])


@pytest.mark.slow
def test_a_sweep_continues_from_its_archive_alone(sweep_copy):
    """What a published sweep's checkout holds (.gitignore drops the run directories): every run is reused, the
    report comes out the same, and the archive is not rewritten."""
    report, archive = (sweep_copy / "report.md").read_text(), (sweep_copy / "runs.tar.xz").read_bytes()
    shutil.rmtree(sweep_copy / "runs")
    outcome = run_sweep(sweep_copy, ["drpo", "pg_is"], 1, ["fp32"], TINY, workers=1)
    assert outcome.reused == ["fp32/drpo/seed0", "fp32/pg_is/seed0"] and outcome.started == outcome.resumed == []
    assert not (sweep_copy / "runs").exists()
    assert (sweep_copy / "report.md").read_text() == report and (sweep_copy / "runs.tar.xz").read_bytes() == archive


@pytest.mark.slow
def test_a_different_config_in_the_same_directory_is_an_error_not_a_reuse(tiny_sweep):
    with pytest.raises(ValueError, match=r"(?s)different config.*eval.prompts"):
        run_sweep(tiny_sweep, ["drpo", "pg_is"], 1, ["fp32"], [*TINY, "eval.prompts=8"], workers=1)
    with pytest.raises(ValueError, match="compare sets"):
        run_sweep(tiny_sweep, ["drpo"], 1, ["fp32"], [*TINY, "loss.delta=0.3"], workers=1)


@pytest.mark.slow
def test_drpo_report_rebuilds_from_the_run_files_alone(sweep_copy):
    """Change pg_is's metrics and the table, the collapse verdict and the paired difference follow."""
    _, _, finals = check_report(sweep_copy, ["drpo", "pg_is"])
    metrics = sweep_copy / "runs" / "fp32" / "pg_is" / "seed0" / "metrics.jsonl"
    records = read_jsonl(metrics)
    evals = [r for r in records if "eval/accuracy" in r]
    evals[0]["eval/accuracy"], evals[1]["eval/accuracy"], evals[-1]["eval/accuracy"] = 0.9, 0.1, 0.1  # 2 evals low
    for r in records[1:]:
        r["mismatch/abs_mean"] = 1e-3 if r["step"] < 3 else 0.5
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.utime(metrics)
    assert main(["report", str(sweep_copy)]) == 0
    report, table, finals = check_report(sweep_copy, ["drpo", "pg_is"])
    assert table["pg_is"]["collapsed"] == "1/1" and "pg_is, seed 0: eval accuracy fell from its best 0.900" in report
    sentences = json.loads((sweep_copy / "results.json").read_text())["verdict"]["conditions"]["fp32"]
    assert "Collapsed: pg_is (1/1 seeds)." in sentences
    assert main(["report", str(sweep_copy), "--target", "0.05"]) == 0
    assert "Target accuracy for *steps to target*: fixed eval accuracy 0.050" in (sweep_copy / "report.md").read_text()
    assert sentences[-1] == ("Against drpo (late accuracy, method - drpo, paired over seeds, 95% t interval): not "
                             f"separable: pg_is {0.1 - finals['drpo']:+.3f} (1 paired seed, no interval).")
    assert table["pg_is"]["final - baseline"] == f"{0.1 - finals['drpo']:+.3f} (1 paired seed, no interval) not separable"
    assert table["drpo"]["final - baseline"] == "baseline"


@pytest.mark.slow
def test_report_of_a_delta_sweep_from_files_alone(tmp_path):
    """A sweep directory written by hand: the conditions table states what mu rounds and the measured mismatch,
    and a loss swept over 3 values gets its table and figure."""
    from drpo.lab.jobs import write_grid
    from drpo.lab.report import write_report
    from drpo.lab.runs import run_dir

    methods = parse_methods(["drpo:delta=0.05", "drpo", "drpo:delta=0.15"])
    conditions = get_conditions(["fp8"])
    write_grid(tmp_path, methods, [0, 1], conditions, ["steps=2"], None)
    for method in methods:
        for seed in (0, 1):
            path = run_dir(tmp_path, "fp8", method.slug, seed)
            path.mkdir(parents=True)
            config = load_config(None, [*conditions["fp8"]["overrides"], *method.overrides(), f"seed={seed}"])
            (path / "config.yaml").write_text(config.to_yaml())
            records = [{"step": 0, "eval/accuracy": 0.3, "eval/prompts": 1200},
                       {"step": 1, "mismatch/abs_mean": 0.01, "mismatch/abs_p_p99": 0.05, "mismatch/max": 0.2,
                        "mismatch/min": -0.1, "loss/weight_min": -0.5, "loss/weight_max": 2.0,
                        "diagnose/pull_to_pg": 0.2},
                       {"step": 2, "mismatch/abs_mean": 0.03, "mismatch/abs_p_p99": 0.07, "mismatch/max": 0.1,
                        "mismatch/min": -0.3, "loss/weight_min": -1.0, "loss/weight_max": 3.0,
                        "diagnose/pull_to_pg": 0.4, "eval/accuracy": 0.4 + 0.1 * seed, "eval/prompts": 1200}]
            (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            (path / "summary.json").write_text(json.dumps({"interrupted": False}))
    report = write_report(tmp_path).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| fp8 | `rollout.precision=fp8"))
    # mean over runs of each run's mean over steps: 0.02 and 0.06; max |pi - mu| over runs and steps: 0.3
    assert "fp8 behavior policy (rounds bf16 model; Linear weights (per tensor)" in row
    assert row.endswith("| 2.00e-02 | 6.00e-02 | 3.00e-01 |")
    # finals 0.4, 0.5: 0.45 -+ 12.706 * 0.0707 / sqrt(2); the seed mean reaches the target 0.3 + 0.15 at step 2
    assert "| fp8 | 0.05 | drpo:delta=0.05 | 2 | 0.450 [-0.185, 1.085] | 0.450 [-0.185, 1.085] | 2 | 0/2 |" in report
    assert "Each evaluation: 1200 held-out prompts" in report and "Baseline: drpo." in report
    row = parse_table(report, "fp8")["drpo:delta=0.15"]  # extremes over steps; the pull ratio's mean over steps
    assert (row["w min / max"], row["pull / pg"]) == ("-1.00 / 3.00", "0.30 ± 0.00")
    assert row["final - baseline"] == "+0.000 [+0.000, +0.000] not separable"
    assert (tmp_path / "figures" / "fp8_sweep.png").stat().st_size > 0
    assert main(["report", str(tmp_path), "--baseline", "drpo:delta=0.15"]) == 0
    assert "Baseline: drpo:delta=0.15." in (tmp_path / "report.md").read_text()


def test_the_report_shows_the_overrides_that_take_effect():
    """The sweep's evaluation size comes first and the command line may override it: the report shows the last."""
    from drpo.lab.report import effective

    assert effective(["task.n_eval=1200", "eval.prompts=1200", "eval.samples=0", "task.n_eval=640", "steps=20",
                      "eval.prompts=640"]) == ["eval.samples=0", "task.n_eval=640", "steps=20", "eval.prompts=640"]
    assert effective([]) == []
