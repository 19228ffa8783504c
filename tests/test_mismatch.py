"""drpo.mismatch on hand-made files: the statistics, the trust regions' masks and bad input, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from drpo.cli import main
from drpo.losses.quadratic import DrpoHyper
from drpo.mismatch import LogProbFileError, analyse, pair_stats, read_log_probs, step_metrics, write_log_probs
from drpo.mismatch.format import records_from_batch
from drpo.mismatch.references import REFERENCES
from drpo.mismatch.stats import BANDS, bucket_stats, trend_jumps, trust_region_stats

# five tokens worked out by hand: pi - mu = [0, .08, .2, 0, -.2], ratio = [1, 1.16, 3, 1, 7/9]
MU = [0.5, 0.5, 0.1, 0.01, 0.9]
PI = [0.5, 0.58, 0.3, 0.01, 0.7]


def record(**fields):
    return {"rollout_log_prob": np.log(MU).tolist(), "old_log_prob": np.log(PI).tolist(), **fields}


def test_band_shares_and_kl_by_hand():
    s = pair_stats(np.log(PI), np.log(MU))
    assert s["tokens"] == 5
    assert s["abs_p_mean"] == pytest.approx(0.48 / 5)
    assert s["abs_p_max"] == pytest.approx(0.2)
    assert s["p_diff_min"] == pytest.approx(-0.2) and s["p_diff_max"] == pytest.approx(0.2)
    assert s["ratio_outside_0.9_1.1"] == pytest.approx(3 / 5)  # 1.16, 3 and 7/9
    assert s["abs_logp_gt_ln2"] == pytest.approx(1 / 5)  # only the ratio of 3
    assert s["abs_p_gt_0.05"] == pytest.approx(3 / 5)
    assert s["abs_p_gt_0.15"] == pytest.approx(2 / 5)
    ratio = np.array(PI) / np.array(MU)
    assert s["kl_k1"] == pytest.approx(np.mean(-np.log(ratio)))
    assert s["kl_k3"] == pytest.approx(np.mean(ratio - 1 - np.log(ratio)))
    assert set(BANDS) <= set(s)


def test_known_quantiles():
    """|pi - mu| = k / 1000 for k = 0..100: the q-quantile is q / 10 exactly (linear interpolation)."""
    mu = np.full(101, 0.5)
    pi = mu + np.arange(101) / 1000
    s = pair_stats(np.log(pi), np.log(mu))
    for key, q in (("p50", 0.05), ("p90", 0.09), ("p95", 0.095), ("p99", 0.099), ("p99.9", 0.0999)):
        assert s[f"abs_p_{key}"] == pytest.approx(q, abs=1e-12), key
    assert s["abs_p_max"] == pytest.approx(0.1)
    assert s["abs_p_mean"] == pytest.approx(0.05)


def test_buckets_split_by_mu():
    rows = bucket_stats(np.log(PI), np.log(MU))
    assert [r["share"] for r in rows] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.2])
    assert rows[3]["abs_p_max"] == pytest.approx(0.2) and rows[3]["ratio_outside_0.9_1.1"] == 1.0  # mu = 0.1
    assert rows[0]["tokens"] == 0


def test_masked_fractions_by_hand():
    """A > 0: only the ratio-3 token crosses every boundary (binary KL 0.116 > 0.05); A < 0: only the 7/9 one.

    DRPO at delta 0.15: w = 1 - sign(A) (pi - mu) / 0.15 = [1, .47, -.33, 1, 2.33] for A > 0.
    """
    pi, mu = np.log(PI), np.log(MU)
    up = trust_region_stats(pi, mu, np.ones(5), drpo_delta=0.15)
    down = trust_region_stats(pi, mu, -np.ones(5), drpo_delta=0.15)
    for label in ("ppo_clip 0.2", "ppo_clip 0.2/0.28", "dppo_binary_tv 0.15", "dppo_binary_kl 0.05"):
        assert up[f"masked/{label}"] == pytest.approx(0.2), label
        assert down[f"masked/{label}"] == pytest.approx(0.2), label
    assert (up["drpo/w_gt_1"], up["drpo/w_lt_0"]) == pytest.approx((0.2, 0.2))
    assert (down["drpo/w_gt_1"], down["drpo/w_lt_0"]) == pytest.approx((0.4, 0.2))
    assert up["drpo/w_min"] == pytest.approx(1 - 0.2 / 0.15) and up["drpo/w_max"] == pytest.approx(1 + 0.2 / 0.15)
    unsigned = trust_region_stats(pi, mu, None, drpo_delta=0.15)  # no advantages: the mean over A = +1 and -1
    assert unsigned["drpo/w_gt_1"] == pytest.approx(0.3) and unsigned["masked/ppo_clip 0.2"] == pytest.approx(0.2)
    default = trust_region_stats(pi, mu, np.ones(5))  # DRPO at the loss's default delta: no token past it here
    delta = DrpoHyper.model_fields["delta"].default
    assert default["drpo/delta"] == delta and default["drpo/w_max"] == pytest.approx(1 + 0.2 / delta)


def test_file_analysis_pairs_and_trend(tmp_path):
    shifted = np.log(np.array(PI) * 0.95).tolist()  # pi = 0.95 pi_old: a drift of ratio 0.95
    records = [record(log_prob=shifted, advantage=1.0, step=step, policy_version=step) for step in range(8)]
    records[-1]["rollout_log_prob"] = np.log([0.01] * 5).tolist()  # the engine jumps at the end
    path = write_log_probs(tmp_path / "run.jsonl", records)
    a = analyse(read_log_probs(path))
    assert (a.tokens, a.sequences, a.steps) == (40, 8, 8)
    assert set(a.pairs) == {"engine", "drift", "total"} and a.main_pair == "engine" and a.trust_pair == "total"
    assert a.pairs["drift"]["ratio_outside_0.9_1.1"] == 0.0
    assert a.pairs["drift"]["logp_mean"] == pytest.approx(math.log(0.95))
    assert a.jumps == [7]
    assert trend_jumps([{"step": i, "abs_p_mean": 1e-6 * (1 + i % 2)} for i in range(8)]) == []  # noise floor


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    records = [record(log_prob=np.log(PI).tolist(), advantage=[0.5, -1, 0, 2, 1], step=3, policy_version=2,
                      rollout_topk_ids=[[1, 2]] * 5, rollout_topk_log_probs=[[-0.1, -2.5]] * 5, id="a",
                      engine="vllm bf16"),
               record(log_prob=np.log(MU).tolist(), advantage=[1.0] * 5, step=4, policy_version=3, id="b",
                      rollout_topk_ids=[[3, 4]] * 5, rollout_topk_log_probs=[[-0.2, -1.5]] * 5, engine="vllm bf16")]
    data = read_log_probs(write_log_probs(tmp_path / f"x{suffix}", records))
    assert np.array_equal(data.rollout_log_prob, np.log(MU * 2))
    assert np.array_equal(data.log_prob, np.concatenate([np.log(PI), np.log(MU)]))
    assert data.advantage.tolist() == [0.5, -1, 0, 2, 1, 1, 1, 1, 1, 1]
    assert data.step.tolist() == [3] * 5 + [4] * 5 and data.policy_version.tolist() == [2] * 5 + [3] * 5
    assert data.rollout_topk_ids.shape == (10, 2) and data.engines == ["vllm bf16"]


def bad(tmp_path, records, *expected):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(LogProbFileError) as error:
        read_log_probs(path)
    for text in expected:
        assert text in str(error.value), (text, str(error.value))


def test_bad_input_names_sequence_and_field(tmp_path):
    good = record(id="s0")
    bad(tmp_path, [good, {"old_log_prob": [-1.0], "id": "s1"}], "'s1'", "missing field 'rollout_log_prob'")
    bad(tmp_path, [{"rollout_log_prob": [-1.0], "id": "s0"}], "'s0'", "'old_log_prob' or 'log_prob'")
    bad(tmp_path, [record(id="s1", log_prob=[-1.0, -2.0])], "'s1'", "lengths disagree", "log_prob has 2")
    bad(tmp_path, [record(id="s1", advantage=[1.0, 2.0])], "'s1'", "advantage has 2")
    nan = record(id="s2")
    nan["old_log_prob"][1] = float("nan")
    bad(tmp_path, [good, nan], "'s2'", "field 'old_log_prob' is nan at token 1")
    bad(tmp_path, [record(id="s3", rollout_log_prob=[0.5] * 5)], "'s3'", "'rollout_log_prob'", "<= 0")
    bad(tmp_path, [good, record(id="s4", log_prob=np.log(PI).tolist())], "'s4'", "has extra field(s) log_prob")
    bad(tmp_path, [record(id="s5", step=1.5)], "'s5'", "'step' must be an integer")
    bad(tmp_path, [record(id="s6", mu=[0.5])], "'s6'", "unknown field(s) mu")
    bad(tmp_path, [record(id="s7", rollout_log_prob=[])], "'s7'", "lengths disagree")
    bad(tmp_path, [record(), record(log_prob=[-1.0])], "'line 2'")  # no id: the line number names it


def test_cli_reports_files_and_errors(tmp_path, capsys):
    write_log_probs(tmp_path / "a" / "log_probs.jsonl", [record(step=s) for s in range(3)])
    write_log_probs(tmp_path / "b.jsonl", [record(log_prob=np.log(PI).tolist())])
    assert main(["mismatch", str(tmp_path / "a"), str(tmp_path / "b.jsonl"), "--delta", "0.3",
                 "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "mismatch.md").read_text()
    assert "| a | pi_old vs mu | 15 |" in report and "## Published figures" in report
    # DRPO's weights at the delta asked for, and the command that reproduces the report says so
    assert "| DRPO (delta 0.3): w min / max |" in report and "b.jsonl --delta 0.3 --out" in report
    assert (tmp_path / "out" / "mismatch.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "mismatch.json").read_text())
    assert [s["label"] for s in saved["sources"]] == ["a", "b"]
    assert saved["sources"][0]["pairs"]["engine"]["abs_p_gt_0.15"] == pytest.approx(0.4)
    assert "a" in capsys.readouterr().out
    (tmp_path / "c.jsonl").write_text('{"rollout_log_prob": [-1.0]}\n')
    assert main(["mismatch", str(tmp_path / "c.jsonl")]) == 2
    assert "'line 1'" in capsys.readouterr().err
    assert main(["mismatch", str(tmp_path / "a"), "model=tiny"]) == 2


def test_runs_named_alike_get_distinct_labels(tmp_path):
    """A sweep's runs share their last directory names: the report keeps the parts that differ."""
    for condition in ("bf16", "fp8"):
        write_log_probs(tmp_path / condition / "drpo" / "seed0" / "log_probs.jsonl", [record()])
    out = tmp_path / "out"
    assert main(["mismatch", str(tmp_path / "bf16" / "drpo" / "seed0"), str(tmp_path / "fp8" / "drpo" / "seed0"),
                 "--out", str(out)]) == 0
    saved = json.loads((out / "mismatch.json").read_text())
    assert [s["label"] for s in saved["sources"]] == ["bf16/drpo/seed0", "fp8/drpo/seed0"]


def test_step_metrics_are_pair_stats_of_the_valid_tokens():
    mu = torch.log(torch.tensor([MU, [0.3, 0.3, 0.3, 0.3, 0.3]]))  # [2, 5]
    pi = torch.log(torch.tensor([PI, [0.9, 0.9, 0.9, 0.9, 0.9]]))
    mask = torch.tensor([[1.0] * 5, [0.0] * 5])  # the second row is padding
    metrics = step_metrics(pi, mu, mask)
    expected = pair_stats(np.log(PI), np.log(MU))
    assert metrics["mismatch/abs_p_gt_0.15"] == pytest.approx(expected["abs_p_gt_0.15"])
    assert metrics["mismatch/kl_k3"] == pytest.approx(expected["kl_k3"], rel=1e-5)
    assert step_metrics(pi, mu, torch.zeros_like(mask)) == {}


def test_records_from_batch_drops_padding():
    mu = torch.log(torch.tensor([[0.5, 0.4, 1.0], [0.2, 1.0, 1.0], [1.0, 1.0, 1.0]]))  # [3, 3]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    records = records_from_batch(mu, mask, old_log_prob=mu, advantages=torch.tensor([1.0, -1.0, 0.0]), step=2)
    assert [len(r["rollout_log_prob"]) for r in records] == [2, 1]  # the empty row is left out
    assert records[1]["advantage"] == -1.0 and records[0]["id"] == "2/0"


def test_references_are_complete():
    stats = set(pair_stats(np.log(PI), np.log(MU)))
    for ref in REFERENCES:
        assert ref.url.startswith("https://") and ref.published and ref.source
        assert ref.stat is None or ref.stat in stats, ref.stat


# --- which delta for this mismatch (drpo.mismatch.recommend) -----------------------------------------

def sweep_results(late: dict[str, dict[float, list[float]]], p99: dict[str, float]) -> dict:
    """A delta sweep's results.json in miniature: per condition, DRPO's late accuracy per delta and seed, and a
    final accuracy that ranks the other way (the recommendation must read the primary outcome, not it)."""
    points = [{"value": d, "label": f"drpo:delta={d:g}"} for d in (0.05, 0.5, 2.0)]
    conditions = {}
    for name, by_delta in late.items():
        methods = {f"drpo:delta={d:g}": {
            "late": {"mean": float(np.mean(v))}, "final": {"mean": 1 - float(np.mean(v))}, "seeds": len(v),
            "per_seed": {str(s): {"late": x, "final": 1 - x, "mismatch": {"p99": p99[name] * (1 + 0.1 * i)}}
                         for s, x in enumerate(v)}}
            for i, (d, v) in enumerate(by_delta.items())}
        conditions[name] = {"about": f"{name}: a test condition", "methods": methods}
    return {"sweeps": [{"loss": "drpo", "points": points}], "conditions": conditions, "level": 0.95,
            "overrides": ["steps=10"]}


def test_recommendation_by_hand():
    from drpo.mismatch.recommend import evidence, recommend

    # low: 0.05 is worse than the best (0.5) on every seed by 0.2 +- 0.01; 2.0 differs from 0.5 by +-0.01 only
    # high: only 0.05 is the best; 0.5 and 2.0 are worse by 0.1 +- 0.01 on each seed
    results = sweep_results({"low": {0.05: [0.30, 0.31, 0.29], 0.5: [0.50, 0.50, 0.50], 2.0: [0.51, 0.49, 0.50]},
                             "high": {0.05: [0.40, 0.40, 0.40], 0.5: [0.30, 0.31, 0.29], 2.0: [0.29, 0.30, 0.31]}},
                            {"low": 0.01, "high": 0.5})
    low, high = evidence(results)
    assert (low.condition, low.best, low.supported, low.worse) == ("low", 0.5, (0.5, 2.0), (0.05,))
    assert (high.best, high.supported, high.worse) == (0.05, (0.05,), (0.5, 2.0))
    # Holm over the 2 comparisons with the best: each d is -0.2 or -0.1 with sd 0.01 (t > 17 on 2 df), still worse
    assert low.worse_corrected == (0.05,) and high.worse_corrected == (0.5, 2.0) and low.compared == 2
    assert low.p99 == pytest.approx(0.01 * 1.1) and low.p99_range == pytest.approx((0.01, 0.012))
    assert low.runs == "10 steps per run" and low.seeds == 3
    # log-nearest condition; the default (0.5) when supported, else the supported delta nearest to it
    at_low = recommend(0.011, 0.5, [low, high], "results.json")
    assert (at_low.evidence.condition, at_low.delta, at_low.placement) == ("low", 0.5, "within")
    at_high = recommend(0.3, 0.5, [low, high], "results.json")
    assert (at_high.evidence.condition, at_high.delta, at_high.placement) == ("high", 0.05, "between")
    assert recommend(1e-4, 0.5, [low, high], "r").placement == "outside"
    text = " ".join(at_high.lines())
    assert "Supported delta: 0.05 to 0.05" in text and "Recommended: delta = 0.05" in text and "results.json" in text
    assert "still worse after Holm's correction for the 2 comparisons: 0.5, 2" in text
    assert "in late accuracy (mean eval accuracy over the last 20% of steps)" in text
    with pytest.raises(ValueError, match="no delta to recommend"):
        recommend(0.0, 0.5, [low, high], "r")


def test_committed_delta_sweep_supports_the_loss_default():
    """The evidence `drpo mismatch` cites: both conditions of docs/results/delta hold DRPO's default delta."""
    from drpo.mismatch.recommend import load_evidence

    conditions = {e.condition: e for e in load_evidence()}
    assert set(conditions) == {"fp8", "stale_strong"}
    default = DrpoHyper().delta
    assert all(default in e.supported for e in conditions.values())
    assert conditions["fp8"].p99 < conditions["stale_strong"].p99
    # what ran, read from a run's config.yaml inside the sweep's archive
    assert all(e.runs == "model small, task arith, 100 steps per run" for e in conditions.values())


def test_cli_recommends_a_delta_with_its_evidence(tmp_path, capsys):
    write_log_probs(tmp_path / "a.jsonl", [record(step=s) for s in range(3)])
    assert main(["mismatch", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "out")]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps lines at its width
    report = (tmp_path / "out" / "mismatch.md").read_text()
    for text in (printed, report):
        assert "Which delta for this mismatch?" in text and "docs/results/delta/results.json" in text
        assert "Recommended: delta = " in text
    # p99 |pi - mu| of the five tokens is 0.2, between fp8's (0.070) and stale_strong's (0.58) and log-nearer
    # fp8 (ratio 2.84 against 2.91); both hold the loss default. The table applies the masks at it: Binary-TV
    # there drops nothing (|pi - mu| <= 0.2 and the default is above it)
    assert "nearest measured condition 'fp8'" in report and "lies between the measured conditions" in report
    assert DrpoHyper().delta > 0.2 and f"| masked by dppo_binary_tv {DrpoHyper().delta:g} | 0.00% |" in report


def test_the_rank_files_of_a_multi_process_dump_read_as_one_source(tmp_path, capsys):
    """Each process of a distributed run writes FILE.rank<N>.jsonl; `drpo mismatch FILE.jsonl` reads them all."""
    for rank in (0, 1, 10):
        write_log_probs(tmp_path / f"lp.rank{rank}.jsonl", [record(id=f"0/{i}", step=rank) for i in range(rank + 1)])
    data = read_log_probs(tmp_path / "lp.jsonl")
    assert data.num_sequences == 1 + 2 + 11 and sorted(set(data.step.tolist())) == [0, 1, 10]
    assert data.label == "lp" and "3 rank files" in data.path
    assert main(["mismatch", str(tmp_path / "lp.jsonl")]) == 0
    assert "lp" in capsys.readouterr().out
