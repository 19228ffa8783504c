"""What a new user meets in the first hour: each case a defect found by following the README from a fresh clone.

Every test here failed before its fix. The CLI's contract under test: a run either works (exit 0), stops on the
user's reward or non-finite losses with one ``stopped: ...`` line (exit 3), or is refused with a one-line error
naming the key, file or column and what to do (exit 2), before any minutes of work and without touching files.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from configs import CHEAP
from rich.console import Console

from drpo import trainer as trainer_module
from drpo.cli import main
from drpo.config import ConfigError, load_config
from drpo.display import step_progress
from drpo.lab.figures import fill_title
from drpo.lab.verdict import _leader_sentence
from drpo.losses import get_loss
from drpo.losses.checks import cannot_bind
from drpo.summary import RunTimes, write_summary
from drpo.tasks.custom import CustomTask, RewardError, RewardFunction, load_function
from drpo.tasks.data import DataError, read_rows
from drpo.trainer import Trainer
from drpo.warmup import base_model_key, build_builtin_policy

ROWS = [{"prompt": f"{a}+{a}=", "solution": str(2 * a)} for a in range(40)]


def exact(completions, solution, **kwargs):
    return [float(c.strip() == s) for c, s in zip(completions, solution, strict=True)]


def write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def never_build(*args, **kwargs):
    raise AssertionError("the base model was built before the refusal")


# 1 ---------------------------------------------------------------------------------------------------------
def test_1_the_warm_up_trains_when_the_caller_holds_no_grad():
    """drpo mismatch builds its policy under torch.no_grad; the base model's warm-up needs gradients."""
    config = load_config(None, ["model=tiny", "warmup.steps=2", "warmup.target_accuracy=null", "seed=11"])
    with torch.no_grad():
        policy = build_builtin_policy(config)
    assert policy.base_info["warmup_steps"] == 2 and not policy.base_info["cached"]


# 2 ---------------------------------------------------------------------------------------------------------
def test_2_a_reward_module_beside_the_user_imports_as_python_script_py_would(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_beside.py").write_text("def reward(completions, **kw):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards_beside", raising=False)
    assert load_function("my_rewards_beside:reward")(["a", "b"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"task.reward=no_such_rewards.py:reward.*PYTHONPATH"):
        load_function("no_such_rewards:reward")


# 3 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_3_a_non_finite_reward_is_an_error_naming_the_function_and_sample(bad):
    def broken(completions, **kwargs):
        return [1.0, bad, 0.0]

    task = CustomTask(data=ROWS, reward=broken, answer_field="solution")
    with pytest.raises(RewardError, match=r"'broken' returned .* for sample 1 \(completion 'b'\).*finite"):
        task.score(["a", "b", "c"], task.train[:3])
    assert RewardFunction.resolve(lambda completions, **kw: [None] * len(completions))(
        ["a"], task.train[:1], None, {}) != [0.0]  # None stays "not scored" (NaN), as TRL treats it


def test_3_summary_json_has_one_spelling_of_no_value(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": "nan"}) + "\n")
    summary = write_summary(tmp_path, loss=get_loss("drpo"), steps=0, steps_planned=0, start_accuracy=math.nan,
                            best_accuracy=math.nan, times=RunTimes(0.0, 0.0, 0.0), base_model=None, stopped="x")
    stored = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN would not parse in other tools
    assert stored["eval/accuracy_start"] is None and stored["eval/accuracy_final"] is None
    assert summary == stored


# 4 ---------------------------------------------------------------------------------------------------------
def test_4_a_reward_error_while_the_base_model_is_built_stops_cleanly(tmp_path, monkeypatch, capsys):
    def failing_build(config, console=None, task=None):
        raise RewardError("reward function 'r' failed on 4 of 4 samples")

    monkeypatch.setattr(trainer_module, "build_policy", failing_build)
    assert main(["train", *CHEAP, f"out={tmp_path / 'run'}"]) == 3
    err = capsys.readouterr().err
    assert "stopped: reward function 'r' failed" in err and "Traceback" not in err


def test_4_the_warm_up_of_a_data_task_never_calls_the_reward(tmp_path):
    """Its probe compares greedy answers with the references it imitates: a broken reward cannot stop it."""
    def boom(completions, **kwargs):
        raise RuntimeError("the user's bug")

    config = load_config(None, ["model=tiny", "task=custom", "warmup.steps=4", "warmup.check_every=2", "seed=5"])
    task = CustomTask(data=ROWS, reward=boom, answer_field="solution")
    policy = build_builtin_policy(config, task=task)
    assert policy.base_info["warmup_probe_accuracy"] is not None


# 5 ---------------------------------------------------------------------------------------------------------
def test_5_the_base_model_is_keyed_by_the_rows_not_by_how_the_config_names_them(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl")
    from_file = load_config(None, ["task=custom", f"data={path}", "task.reward=m.py:exact", "task.answer_field=solution"])
    from_objects = load_config(None, ["task=custom", "task.answer_field=solution"])
    by_file = CustomTask(data=str(path), reward=exact, answer_field="solution")
    by_objects = CustomTask(data=list(ROWS), reward=lambda completions, **kw: [0.0] * len(completions),
                            answer_field="solution")
    assert base_model_key(from_file, by_file) == base_model_key(from_objects, by_objects)
    other_rows = CustomTask(data=ROWS[:-1], reward=exact, answer_field="solution")
    assert base_model_key(from_objects, other_rows) != base_model_key(from_objects, by_objects)
    generated = load_config(None, ["task=arith"])
    assert base_model_key(generated) != base_model_key(load_config(None, ["task=arith", "task.digits=3"]))


# 6, 7 ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_6_7_resuming_a_finished_run_leaves_its_record_and_timings_say_what_they_cover(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *CHEAP, "steps=2", f"out={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {"wall_time_s", "setup_time_s", "process_time_s"} <= set(summary)
    assert summary["process_time_s"] >= summary["setup_time_s"] + summary["wall_time_s"] - 0.2
    record = {name: (run / name).read_bytes() for name in ("config.yaml", "summary.json", "metrics.jsonl")}
    capsys.readouterr()

    assert main(["train", f"resume={run}"]) == 0
    assert "already finished its 2 steps" in " ".join(capsys.readouterr().err.split())
    assert main(["train", f"resume={run}", "steps=1"]) == 2
    assert "already did 2 steps, more than steps=1" in " ".join(capsys.readouterr().err.split())
    assert main(["train", f"resume={run}", f"out={tmp_path / 'elsewhere'}"]) == 2
    assert not (tmp_path / "elsewhere").exists()
    assert {name: (run / name).read_bytes() for name in record} == record

    assert main(["train", f"resume={run}", "steps=3"]) == 0  # extending adds to the RL time it had
    extended = json.loads((run / "summary.json").read_text())
    assert extended["steps"] == 3 and extended["wall_time_s"] >= summary["wall_time_s"]


# 8 ---------------------------------------------------------------------------------------------------------
def test_8_off_a_terminal_progress_is_plain_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    with step_progress(console, 10, 0, "warm-up (base model)") as update:
        for step in range(1, 11):
            update(step, f"probe accuracy {step / 10:.3f}", milestone=step % 5 == 0)
    lines = out.getvalue().splitlines()
    assert lines == ["warm-up (base model) 5/10  0s  probe accuracy 0.500",
                     "warm-up (base model) 10/10  0s  probe accuracy 1.000"]
    assert "━" not in out.getvalue() and "…" not in out.getvalue()


# 9 ---------------------------------------------------------------------------------------------------------
def test_9_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "build_policy", never_build)
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    assert main(["train", *CHEAP, f"out={existing}"]) == 2
    assert "is a file" in capsys.readouterr().err and existing.read_text() == "keep me"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("steps: 1\n")
    with pytest.raises(ConfigError, match="already holds a run"):  # the Python API too, not only the CLI
        Trainer(load_config(None, [*CHEAP, f"out={tmp_path / 'old'}"]))


# 10, 11 ----------------------------------------------------------------------------------------------------
def test_10_invalid_yaml_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nloss: {name: drpo\nseed: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"drpo train: error: config file {bad}, line ") and "column" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_11_messages_say_what_is_wrong_and_what_to_do(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a directory; --config takes a YAML file" in capsys.readouterr().err
    with pytest.raises(DataError, match="not a data file, and not a datasets save_to_disk directory"):
        CustomTask(data=str(tmp_path), reward=exact)
    with pytest.raises(DataError, match=r"no row has a column 'answer'.*task.answer_field=solution"):
        CustomTask(data=ROWS, reward=exact)
    with pytest.raises(DataError, match=r"no row has a column 'answer'.*task.answer_field=solution"):
        CustomTask(data=ROWS, reward=exact, skip_bad_rows=True)  # skipping would drop every row
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "task.answer_field=solution" in readme


# 12 --------------------------------------------------------------------------------------------------------
def test_12_an_evaluation_larger_than_the_held_out_split_says_so_at_start(tmp_path):
    out = io.StringIO()
    task = CustomTask(data=ROWS, reward=exact, answer_field="solution")
    config = load_config(None, [*CHEAP, "task=custom", "task.answer_field=solution", "eval.prompts=256",
                                f"out={tmp_path / 'run'}"])
    Trainer(config, console=Console(file=out, width=200), task=task)
    assert f"eval.prompts=256, but the held-out split has {len(task.eval)} prompts" in out.getvalue()


# 13 --------------------------------------------------------------------------------------------------------
def test_13_small_messages(tmp_path):
    assert "stays within (0.999999999, 1.000000001)" in cannot_bind(get_loss("drpo", delta=1e9))
    (tmp_path / "rows.jsonl").write_text('{"prompt": "unterminated\n')
    reason = next(read_rows(tmp_path / "rows.jsonl"))[2]
    assert "starting at column" in reason and "at at" not in reason
    for line in fill_title("fp8: " + "a long condition description " * 12, 13).splitlines():
        assert len(line) <= 13 * 72 / (0.6 * 12)
    stat = {"mean": 0.5, "low": 0.4, "high": 0.6, "std": 0.1, "n": 3}
    tied = {label: {"late": stat, "final": stat, "seeds": 3} for label in ("a", "b")}
    assert "a (tied with b)" in _leader_sentence("c", "a", ["a", "b"], tied, 95)


def test_13_the_mismatch_advice_table_says_which_pi_it_reads(tmp_path, capsys):
    from test_mismatch import record, write_log_probs

    write_log_probs(tmp_path / "a.jsonl", [record()])
    assert main(["mismatch", str(tmp_path / "a.jsonl")]) == 0
    assert "pi against mu; pi_old against mu for a source without pi" in " ".join(capsys.readouterr().out.split())


# 14 --------------------------------------------------------------------------------------------------------
def test_14_the_published_default_run_shows_rls_gain_not_the_warm_ups():
    """docs/results/default is the run README describes: made with today's defaults, its warm-up stopped near its
    target, and RL, not the warm-up, made the gain (at least 15 points of late accuracy)."""
    import gzip

    import yaml

    from drpo.config import RunConfig
    from drpo.lab.outcomes import late_accuracy
    from drpo.warmup import KEYS_ADDED_LATER

    published = Path(__file__).parents[1] / "docs" / "results" / "default"
    summary = json.loads((published / "summary.json").read_text())
    config = yaml.safe_load((published / "config.yaml").read_text())
    today = RunConfig().warmup.model_dump(mode="json")  # keys added since keep the published base model's recipe
    assert config["warmup"] == {k: v for k, v in today.items() if k not in KEYS_ADDED_LATER["warmup"]}
    assert all(today[k] == v for k, v in KEYS_ADDED_LATER["warmup"].items())
    base = summary["base_model"]
    assert 0 <= base["warmup_probe_accuracy"] - base["warmup_target_accuracy"] < 0.05
    records = [json.loads(line) for line in gzip.decompress((published / "metrics.jsonl.gz").read_bytes()).splitlines()]
    late = late_accuracy([(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r])
    assert late - summary["eval/accuracy_start"] >= 0.15
