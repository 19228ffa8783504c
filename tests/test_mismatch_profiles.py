"""The trust regions per response-length and per position bin: by hand, and adding up to the whole source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drpo.lab.mismatch_report import LENGTH_COLUMNS, POSITION_COLUMNS, markdown, write_report
from drpo.losses import DRPO_DELTA, get_loss
from drpo.mismatch import analyse
from drpo.mismatch.format import from_records
from drpo.mismatch.stats import (
    PROFILE_TRUST,
    TIS_TRUNCATED,
    length_profile,
    position_profile,
    trust_region_stats,
)

DRPO_PULL, DPPO_MASK, PPO_CLIP, TIS = (key for key, _ in PROFILE_TRUST)

# two responses, one per default length bin (1-8, 9-32); pi_old - mu and pi_old / mu of each token, against the
# registered defaults DRPO delta 0.3, DPPO Binary-TV 0.15, PPO clip-higher [0.8, 1.28], TIS cap 2:
#   short (4 tokens): .5/.5 nothing; .3/.1 (+.2, r 3): DPPO, PPO for A > 0 and TIS;
#                     .4/.6 (-.2, r .67): DPPO, PPO for A < 0; .5/.9 (-.4, r .56): DRPO, DPPO, PPO for A < 0
#   long (10 tokens): .6/.2 (+.4, r 3): DRPO, DPPO, PPO for A > 0 and TIS; .62/.5 (+.12, r 1.24): nothing
#                     (PPO's symmetric 0.2 would clip it, clip-higher does not); .66/.5 (+.16, r 1.32): DPPO, PPO
#                     for A > 0; seven .5/.5: nothing
HAND = {
    "short": ([0.5, 0.3, 0.4, 0.5], [0.5, 0.1, 0.6, 0.9]),
    "long": ([0.6, 0.62, 0.66] + [0.5] * 7, [0.2, 0.5, 0.5] + [0.5] * 7),
}
# without advantages a mask counts half a token (the mean over A = +1 and -1); TIS does not look at the sign
SHORT = {DRPO_PULL: 1 / 8, DPPO_MASK: 3 / 8, PPO_CLIP: 3 / 8, TIS: 1 / 4}
LONG = {DRPO_PULL: 1 / 20, DPPO_MASK: 2 / 20, PPO_CLIP: 2 / 20, TIS: 1 / 10}


def hand_data(advantage: float | None = None):
    return from_records([{"id": name, "old_log_prob": np.log(pi).tolist(), "rollout_log_prob": np.log(mu).tolist(),
                          **({} if advantage is None else {"advantage": advantage})}
                         for name, (pi, mu) in HAND.items()], label="hand")


def test_the_profiles_read_the_registered_defaults():
    assert get_loss("drpo").hyper.delta == DRPO_DELTA == 0.3  # the hand-made tokens above assume these
    assert DPPO_MASK == "masked/dppo_binary_tv 0.15" and PPO_CLIP == "masked/ppo_clip 0.2/0.28"
    assert TIS == TIS_TRUNCATED == "truncated/ppo_tis 2" and get_loss("ppo_tis").hyper.is_high == 2.0


def test_length_bins_by_hand():
    short, long = length_profile(hand_data())
    assert (short["bin"], short["tokens"], long["bin"], long["tokens"]) == ("1-8", 4, "9-32", 10)
    for row, expected in ((short, SHORT), (long, LONG)):
        assert {key: row[key] for key in expected} == pytest.approx(expected), row["bin"]
        assert row["drpo/delta"] == DRPO_DELTA
    for row, (pi, mu) in ((short, HAND["short"]), (long, HAND["long"])):
        assert row["logp_std"] == pytest.approx(np.std(np.log(np.array(pi) / np.array(mu))))


def test_position_bins_by_hand():
    first, second, rest = position_profile(hand_data(), edges=(1, 2, 3))
    # position 1: .5/.5 (short) and .6/.2 (long), which DRPO, DPPO and PPO act on for A > 0, TIS always
    assert first["tokens"] == 2
    assert {key: first[key] for key, _ in PROFILE_TRUST} == pytest.approx(
        {DRPO_PULL: 1 / 4, DPPO_MASK: 1 / 4, PPO_CLIP: 1 / 4, TIS: 1 / 2})
    # position 2: .3/.1 (DPPO, PPO for A > 0, TIS) and .62/.5 (nothing)
    assert {key: second[key] for key, _ in PROFILE_TRUST} == pytest.approx(
        {DRPO_PULL: 0, DPPO_MASK: 1 / 4, PPO_CLIP: 1 / 4, TIS: 1 / 2})
    # positions 3+: .4/.6 and .5/.9 (A < 0), .66/.5 (A > 0) and seven at 1: 10 tokens, 20 token-signs
    assert rest["tokens"] == 10
    assert {key: rest[key] for key, _ in PROFILE_TRUST} == pytest.approx(
        {DRPO_PULL: 1 / 20, DPPO_MASK: 3 / 20, PPO_CLIP: 3 / 20, TIS: 0})


def test_advantages_of_the_file_choose_the_side():
    """A > 0 on every token: only tokens above mu count, each a whole token."""
    short, long = length_profile(hand_data(advantage=1.0))
    assert {key: short[key] for key, _ in PROFILE_TRUST} == pytest.approx(
        {DRPO_PULL: 0, DPPO_MASK: 1 / 4, PPO_CLIP: 1 / 4, TIS: 1 / 4})
    assert {key: long[key] for key, _ in PROFILE_TRUST} == pytest.approx(
        {DRPO_PULL: 1 / 10, DPPO_MASK: 2 / 10, PPO_CLIP: 2 / 10, TIS: 1 / 10})


def test_the_delta_reaches_the_bins():
    """--delta 0.1: DRPO also pulls back .3/.1, .62/.5 and .66/.5 (A > 0) and .4/.6 (A < 0)."""
    short, long = length_profile(hand_data(), drpo_delta=0.1)
    assert (short[DRPO_PULL], long[DRPO_PULL], short["drpo/delta"]) == pytest.approx((3 / 8, 3 / 20, 0.1))
    assert analyse(hand_data(), drpo_delta=0.1).by_position[0]["drpo/delta"] == 0.1


@st.composite
def sources(draw):
    """Random responses (lengths 1..80), log pi_old = log mu + noise (capped at 0), advantages or none; random
    bin edges from 1."""
    lengths = draw(st.lists(st.integers(1, 80), min_size=1, max_size=8))
    with_advantage = draw(st.booleans())
    # the log-probs from a drawn seed: drawing thousands of floats one by one exceeds hypothesis' entropy budget
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    records = []
    for n in lengths:
        log_mu = -6.0 * rng.random(n)
        log_pi = np.minimum(log_mu + rng.normal(0.0, 0.5, n), 0.0)
        records.append({"rollout_log_prob": log_mu.tolist(), "old_log_prob": log_pi.tolist(),
                        **({"advantage": float(rng.normal())} if with_advantage else {})})
    edges = (1, *sorted(draw(st.sets(st.integers(2, 100), max_size=4))))
    return from_records(records, label="random"), edges


@settings(max_examples=20, deadline=None)
@given(source=sources(), drpo_delta=st.sampled_from([None, 0.1, 0.3]))
def test_bin_shares_weighted_by_tokens_are_the_whole_source_shares(source, drpo_delta):
    data, edges = source
    whole = trust_region_stats(data.old_log_prob, data.rollout_log_prob, data.advantage, drpo_delta)
    shares = [key for key in whole if key.startswith(("masked/", "truncated/", "drpo/w_gt", "drpo/w_lt"))]
    assert {key for key, _ in PROFILE_TRUST} <= set(shares)
    for rows in (length_profile(data, edges, drpo_delta=drpo_delta),
                 position_profile(data, edges, drpo_delta=drpo_delta)):
        for key in shares:
            weighted = sum(row[key] * row["tokens"] for row in rows) / data.num_tokens
            assert weighted == pytest.approx(whole[key], abs=1e-12), key
        assert min(row["drpo/w_min"] for row in rows) == pytest.approx(whole["drpo/w_min"], abs=1e-12)


def test_markdown_and_json_carry_the_new_columns(tmp_path):
    a = analyse(hand_data())
    text = markdown([a], figure="mismatch.png")
    headers = ["sd log(pi/mu)", "DRPO pull-back (w < 0)", "DPPO mask (dppo_binary_tv 0.15)",
               "PPO clip (ppo_clip 0.2/0.28)", "TIS truncation (pi/mu > 2)"]
    assert [h for _, h in LENGTH_COLUMNS[-4:]] == [h for _, h in POSITION_COLUMNS[-4:]] == headers[1:]
    for table in ("length", "position"):
        header_line = next(line for line in text.splitlines() if line.startswith(f"| {table} |"))
        assert all(h in header_line for h in headers), table
    assert "| 1-8 | 1 | 4 |" in text and "| 37.50% | 37.50% | 25.00% |" in text  # the short bin's shares
    assert "at delta 0.3" in text and "![trust regions by position](mismatch_by_position.png)" in text
    assert "| TIS truncation (pi/mu > 2) | 14.29% |" in text  # the whole source: 2 of 14 tokens
    write_report([a], tmp_path)
    assert (tmp_path / "mismatch_by_position.png").stat().st_size > 0
    saved = json.loads((tmp_path / "mismatch.json").read_text())["sources"][0]
    assert saved["by_length"][1][DRPO_PULL] == pytest.approx(LONG[DRPO_PULL])
    assert saved["by_position"][0][TIS] == pytest.approx(2 / 12)  # positions 1-8: both r = 3 tokens, of 12
