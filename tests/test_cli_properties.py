"""Property: whatever a user types, `drpo train`, `drpo compare` and `drpo mismatch` either accept it and go to
work, or refuse it with an error that names the problem (exit 2): never a traceback, never a changed file.

The work itself is replaced by a sentinel (building the policy, starting the sweep's processes, measuring the
model), so each example costs only the parsing and validation that a user's typo meets first.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drpo import trainer as trainer_module
from drpo.cli import main
from drpo.lab import compare as compare_module
from drpo.mismatch import model as mismatch_model


class Reached(Exception):
    """The arguments were accepted and the command started its work."""


KEYS = ["steps", "seed", "out", "resume", "data", "loss", "loss.delta", "loss.eps", "loss.aggregation", "model",
        "model.moe", "model.lora_rank", "task", "task.digits", "task.reward", "task.answer_field", "rollout.precision",
        "rollout.engine", "rollout.lag", "rollout.top_p", "rollout.stop", "eval.prompts", "eval.every",
        "warmup.steps", "warmup.target_accuracy", "optim.lr", "updates_per_batch", "report_to", "adaptive_delta",
        "adaptive_delta.enabled", "loss.delta.x", "no_such_key", "rollout.no_such", "task.reward_weights"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths a value may name: a file, a directory, a run directory, a missing path, YAML files good and bad."""
    root = tmp_path_factory.mktemp("world")
    (root / "file.txt").write_text("not a run\n")
    (root / "dir").mkdir()
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text("steps: 2\n")
    (root / "rows.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "oops"\n')
    (root / "good.yaml").write_text("steps: 3\nloss: drpo\n")
    (root / "bad.yaml").write_text("steps: [3\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00steps")
    return root


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Where `drpo compare` may write its plan (outside ``world``, whose files must stay as they were)."""
    return tmp_path_factory.mktemp("sweeps")


def values(root: Path):
    paths = [str(root / name) for name in ("file.txt", "dir", "run", "missing", "rows.jsonl", "good.yaml")]
    numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True))
    words = st.sampled_from(["drpo", "spo", "tiny", "small", "fp8", "bf16", "q4_0", "llamacpp", "vllm", "true", "null",
                             "[a,b]", "{x: 1}", "custom", "arith", "hf:/nowhere", "nope:fn", "", "m.py:f"])
    return st.one_of(st.sampled_from(paths), numbers.map(str), words, TEXT)


def items(root: Path):
    key = st.one_of(st.sampled_from(KEYS), TEXT.filter(lambda k: "=" not in k and not k.startswith("-")))
    pair = st.builds(lambda k, v: f"{k}={v}", key, values(root))
    malformed = TEXT.filter(lambda t: "=" not in t and not t.startswith("-") and t.strip())
    return st.lists(st.one_of(pair, pair, pair, malformed), max_size=4)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_cli(argv: list[str]) -> tuple[str, str]:
    """('reached' | 'refused', stderr) of ``drpo ARGV`` with the work replaced by the sentinel."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            mock.patch.object(trainer_module, "build_policy", side_effect=Reached), \
            mock.patch.object(compare_module, "run_processes", side_effect=Reached), \
            mock.patch.object(mismatch_model, "measure_rollouts", side_effect=Reached):
        try:
            code = main(argv)
        except Reached:
            return "reached", err.getvalue()
        except SystemExit as exit_:  # argparse: an unknown flag or a missing argument
            code = exit_.code
    assert code in (0, 2), (argv, code, err.getvalue())
    return ("reached" if code == 0 else "refused"), err.getvalue()


def check(argv: list[str], root: Path) -> None:
    before = snapshot(root)
    outcome, err = run_cli(argv)
    assert "Traceback" not in err, (argv, err)
    if outcome == "refused":  # warnings may come first (a loss that cannot bind); then the error, one line a problem
        errors = [line for line in err.splitlines() if line.startswith((f"drpo {argv[0]}: error: ", "usage: drpo"))]
        assert errors, (argv, err)
    assert snapshot(root) == before, argv


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_drpo_train_accepts_or_refuses_in_one_line(world, data, monkeypatch):
    monkeypatch.chdir(world)
    argv = ["train", *data.draw(items(world))]
    config = data.draw(st.one_of(st.none(), st.sampled_from(["good.yaml", "bad.yaml", "list.yaml", "binary.yaml",
                                                              "dir", "missing.yaml", "file.txt"])))
    if config is not None:
        argv[1:1] = ["--config", str(world / config)]
    check(argv, world)


@SETTINGS
@given(data=st.data())
def test_drpo_compare_accepts_or_refuses_in_one_line(world, sweeps, data, monkeypatch):
    monkeypatch.chdir(world)
    methods = data.draw(st.lists(st.one_of(st.sampled_from(["drpo", "spo", "ppo_tis", "drpo:delta=0.2", "nope",
                                                            "drpo:delta=x", "drpo:"]), TEXT), max_size=3))
    conditions = data.draw(st.lists(st.one_of(st.sampled_from(["fp8", "stale", "bf16", "nope"]), TEXT), max_size=2))
    argv = ["compare", "--out", str(sweeps / "sweep"), *data.draw(items(world))]
    if methods:
        argv += ["--methods", *methods]
    if conditions:
        argv += ["--conditions", *conditions]
    check(argv, world)


@SETTINGS
@given(data=st.data())
def test_drpo_mismatch_accepts_or_refuses_in_one_line(world, data, monkeypatch):
    monkeypatch.chdir(world)
    inputs = data.draw(st.one_of(items(world).filter(bool),
                                 st.lists(st.sampled_from(["file.txt", "dir", "run", "missing", "rows.jsonl"]),
                                          min_size=1, max_size=2)))
    argv = ["mismatch", *inputs, *data.draw(st.sampled_from([[], ["--precisions", "bf16", "fp4"], ["--delta", "-1"],
                                                             ["--samples", "0"]]))]
    check(argv, world)
