"""drpo.mismatch on hand-made files: the statistics, the trust regions' masks and bad input, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drpo.cli import main
from drpo.lab.evidence import COMMAND, RESULTS, build_evidence, evidence
from drpo.lab.mismatch_references import REFERENCES
from drpo.losses.quadratic import DrpoHyper
from drpo.mismatch import LogProbFileError, analyse, pair_stats, read_log_probs, step_metrics, write_log_probs
from drpo.mismatch.format import records_from_batch
from drpo.mismatch.recommend import load_evidence, read_evidence, recommend
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    conditions = {e.condition: e for e in load_evidence()}
    assert set(conditions) == {"fp8", "stale_strong"}
    default = DrpoHyper().delta
    assert all(default in e.supported for e in conditions.values())
    assert conditions["fp8"].p99 < conditions["stale_strong"].p99
    # what ran, read from a run's config.yaml inside the sweep's archive
    assert all(e.runs == "model small, task arith, 100 steps per run" for e in conditions.values())


def test_the_shipped_evidence_is_the_committed_sweeps():
    """drpo/mismatch/evidence.json (package data: what `drpo mismatch` recommends from, in a wheel too) is what
    the lab computes from the committed delta sweep; a sweep re-run without regenerating it fails here."""
    shipped = read_evidence()
    assert shipped == build_evidence(RESULTS), (
        "src/drpo/mismatch/evidence.json is not the committed sweep's (docs/results/delta/results.json): "
        f"regenerate it with `{COMMAND}`")
    assert shipped["source"] == "docs/results/delta/results.json"
    assert load_evidence(shipped) == evidence(json.loads(RESULTS.read_text()), RESULTS.parent)


@pytest.mark.slow
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


# ------------------------------------------------------------------ by response length and position, by hand
# three responses, stored B between A and C so the bins are not contiguous runs of sequences:
#   A: 2 tokens, mu [.5, .2],     pi_old [.5, .3]            -> s = ln 1.5
#   B: 10 tokens, mu .5 each,     pi_old [.125, .5 x 9]      -> s = ln .25 = -ln 4
#   C: 1 token,  mu [.05],        pi_old [.15]               -> s = ln 3
PROFILE_SEQUENCES = {
    "A": ([0.5, 0.2], [0.5, 0.3]),
    "B": ([0.5] * 10, [0.125] + [0.5] * 9),
    "C": ([0.05], [0.15]),
}


def profile_data(pi_field="old_log_prob"):
    from drpo.mismatch.format import from_records

    return from_records([{"id": name, "rollout_log_prob": np.log(mu).tolist(), pi_field: np.log(pi).tolist()}
                         for name, (mu, pi) in PROFILE_SEQUENCES.items()], label="hand")


def test_token_positions_follow_the_stored_order():
    from drpo.mismatch.stats import token_positions

    data = profile_data()
    assert data.seq_index.tolist() == [0, 0] + [1] * 10 + [2]  # from_records keeps each sequence's tokens in order
    assert token_positions(data.seq_index).tolist() == [1, 2, *range(1, 11), 1]
    assert token_positions(np.array([3, 1, 3, 1, 3])).tolist() == [1, 1, 2, 2, 3]  # interleaved: order kept per id


def test_sequence_log_ratios_and_their_statistics_by_hand():
    from drpo.mismatch.stats import sequence_log_ratios, sequence_stats

    data = profile_data()
    s = sequence_log_ratios(data.old_log_prob - data.rollout_log_prob, data.seq_index, data.num_sequences)
    assert s == pytest.approx([math.log(1.5), -math.log(4), math.log(3)])
    st = sequence_stats(s)
    assert st["sequences"] == 3
    assert st["abs_s_mean"] == pytest.approx(math.log(18) / 3)  # (ln 1.5 + ln 4 + ln 3) / 3
    assert st["abs_s_max"] == pytest.approx(math.log(4))
    # numpy's linear quantile over the sorted |s| = [ln 1.5, ln 3, ln 4]: position 0.99 x 2 = 1.98
    assert st["abs_s_p99"] == pytest.approx(math.log(3) + 0.98 * (math.log(4) - math.log(3)))
    # exp(s) - 1 - s: 1.5 - 1 - ln 1.5, 0.25 - 1 + ln 4, 3 - 1 - ln 3
    assert st["seq_k3"] == pytest.approx((1.75 - math.log(1.125)) / 3)
    assert st["abs_s_gt_ln2"] == pytest.approx(2 / 3)  # B and C
    assert st["s_mean"] == pytest.approx(math.log(1.125) / 3)
    a = analyse(data)
    assert a.profile_pair == "engine" and a.sequence == pytest.approx(st)


def test_length_profile_by_hand():
    from drpo.mismatch.stats import length_profile

    short, long = length_profile(profile_data())  # default edges: 1-8 holds A and C, 9-32 holds B; no 33+ rows
    assert (short["bin"], short["low"], short["high"], short["sequences"], short["tokens"]) == ("1-8", 1, 8, 2, 3)
    assert short["abs_p_mean"] == pytest.approx(0.2 / 3)  # |pi - mu| = 0, .1 (A), .1 (C)
    assert short["abs_p_max"] == pytest.approx(0.1) and short["abs_p_p99"] == pytest.approx(0.1)
    assert short["kl_k3"] == pytest.approx((2.5 - math.log(4.5)) / 3)  # 0, 1.5 - 1 - ln 1.5, 3 - 1 - ln 3
    assert short["abs_s_mean"] == pytest.approx(math.log(4.5) / 2) and short["abs_s_max"] == pytest.approx(math.log(3))
    assert short["seq_k3"] == pytest.approx((2.5 - math.log(4.5)) / 2) and short["abs_s_gt_ln2"] == 0.5
    assert (long["bin"], long["high"], long["sequences"], long["tokens"]) == ("9-32", 32, 1, 10)
    assert long["abs_p_mean"] == pytest.approx(0.0375) and long["abs_p_max"] == pytest.approx(0.375)
    assert long["abs_p_p99"] == pytest.approx(0.91 * 0.375)  # nine zeros and 0.375: position 0.99 x 9 = 8.91
    assert long["kl_k3"] == pytest.approx((math.log(4) - 0.75) / 10)
    assert long["abs_s_mean"] == pytest.approx(math.log(4)) and long["seq_k3"] == pytest.approx(math.log(4) - 0.75)
    assert long["abs_s_gt_ln2"] == 1.0
    # edges of one's own: a bin of one length, and the open last bin
    rows = length_profile(profile_data(), edges=(1, 2, 3))
    assert [(r["bin"], r["sequences"], r["tokens"]) for r in rows] == [("1", 1, 1), ("2", 1, 2), ("3+", 1, 10)]


def test_position_profile_by_hand():
    from drpo.mismatch.stats import position_profile

    first, second, rest = position_profile(profile_data(), edges=(1, 2, 3))
    assert (first["bin"], first["tokens"], first["sequences"]) == ("1", 3, 3)  # A1, B1, C1
    assert first["abs_p_mean"] == pytest.approx(0.475 / 3) and first["abs_p_max"] == pytest.approx(0.375)
    assert first["kl_k3"] == pytest.approx((math.log(4) - 0.75 + 2 - math.log(3)) / 3)
    assert first["rare_share"] == pytest.approx(1 / 3)  # C1: mu = 0.05
    assert (second["bin"], second["tokens"], second["sequences"]) == ("2", 2, 2)  # A2, B2
    assert second["abs_p_mean"] == pytest.approx(0.05) and second["rare_share"] == 0.0
    assert (rest["bin"], rest["high"], rest["tokens"], rest["sequences"]) == ("3+", None, 8, 1)
    assert rest["abs_p_max"] == 0.0
    default = position_profile(profile_data())
    assert [(r["bin"], r["tokens"], r["sequences"]) for r in default] == [("1-8", 11, 3), ("9-32", 2, 1)]


def test_profiles_use_pi_without_pi_old_and_refuse_bad_edges():
    from drpo.mismatch.stats import bin_labels, check_edges, length_profile, profile_pair

    data = profile_data("log_prob")
    assert profile_pair(data) == "total" and analyse(data).profile_pair == "total"
    assert [r["tokens"] for r in length_profile(data)] == [3, 10]
    assert bin_labels((1, 9, 33, 129, 513)) == ["1-8", "9-32", "33-128", "129-512", "513+"]
    for bad in ((), (0, 8), (2, 9), (1, 9, 9), (1, 9, 5)):
        with pytest.raises(ValueError, match="start"):
            check_edges(bad)


@pytest.mark.slow
def test_report_shows_the_profiles(tmp_path, capsys):
    path = write_log_probs(tmp_path / "hand.jsonl", [{"id": name, "rollout_log_prob": np.log(mu).tolist(),
                                                     "old_log_prob": np.log(pi).tolist()}
                                                    for name, (mu, pi) in PROFILE_SEQUENCES.items()])
    assert main(["mismatch", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "by response length" in printed and "9-32" in printed
    text = (tmp_path / "out" / "mismatch.md").read_text()
    assert "## By response length" in text and "## By position in the response" in text
    assert "sequence k3 = the mean over responses of exp(s) - 1 - s" in text
    assert (tmp_path / "out" / "mismatch_by_length.png").stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "mismatch.json").read_text())["sources"][0]
    assert saved["profile_pair"] == "engine" and [r["bin"] for r in saved["by_length"]] == ["1-8", "9-32"]
    assert saved["sequence"]["abs_s_max"] == pytest.approx(math.log(4))
    assert saved["by_position"][0]["tokens"] == 11


@st.composite
def random_sources(draw):
    """Random responses (lengths 1..300) with log mu and log pi_old in [-12, 0]; random bin edges from 1."""
    from drpo.mismatch.format import from_records

    lengths = draw(st.lists(st.integers(1, 300), min_size=1, max_size=12))
    # the log-probs from a drawn seed: drawing thousands of floats one by one exceeds hypothesis' entropy budget
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    records = [{"rollout_log_prob": (-12.0 * rng.random(n)).tolist(), "old_log_prob": (-12.0 * rng.random(n)).tolist()}
               for n in lengths]
    edges = (1, *sorted(draw(st.sets(st.integers(2, 400), max_size=5))))
    return from_records(records, label="random"), edges


@settings(max_examples=40, deadline=None)
@given(source=random_sources())
def test_profiles_partition_the_tokens_and_sequences(source):
    from drpo.mismatch.stats import (
        length_profile,
        position_profile,
        sequence_log_ratios,
        sequence_stats,
        token_positions,
    )

    data, edges = source
    by_length, by_position = length_profile(data, edges), position_profile(data, edges)
    assert sum(r["tokens"] for r in by_length) == data.num_tokens
    assert sum(r["sequences"] for r in by_length) == data.num_sequences
    assert sum(r["tokens"] for r in by_position) == data.num_tokens
    assert by_position[0]["sequences"] == data.num_sequences  # every response has a first token
    s = sequence_log_ratios(data.old_log_prob - data.rollout_log_prob, data.seq_index, data.num_sequences)
    assert sequence_stats(s)["seq_k3"] >= 0 and all(r["seq_k3"] >= 0 for r in by_length)
    # the bins' |s| add up to all of them
    assert sum(r["abs_s_mean"] * r["sequences"] for r in by_length) == pytest.approx(np.abs(s).sum(), rel=1e-9)
    positions = token_positions(data.seq_index)
    assert np.bincount(data.seq_index).tolist() == [int(positions[data.seq_index == i].max())
                                                     for i in range(data.num_sequences)]
