"""task=custom: rows as users keep them, reward functions as TRL and verl users write them, stop strings,
trackers, the Python API and the examples, each on tiny settings."""

from __future__ import annotations

import glob
import json
import math
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

from drpo.advantages import group_advantages
from drpo.config import ConfigError, load_config
from drpo.metrics import read_metrics
from drpo.tasks.custom import CustomTask, RewardError, RewardFunction, combine, load_function
from drpo.tasks.data import DataError

EXAMPLES = Path(__file__).parent.parent / "examples" / "custom_task"
ROWS = [{"prompt": f"{w}=", "answer": w[::-1], "level": i % 3} for i, w in enumerate(
    ["abc", "bca", "cab", "acb", "bac", "cba", "aab", "abb", "bba", "baa"])]


def exact(completions, answer, **kwargs):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer, strict=True)]


def write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return path


def custom(data=ROWS, reward=exact, **options):
    return CustomTask(data=data, reward=reward, **options)


# ------------------------------------------------------------------------------------------ rows
def test_jsonl_parquet_and_a_datasets_directory_give_the_same_rows(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    from pyarrow import parquet

    jsonl = custom(write_jsonl(tmp_path / "rows.jsonl", ROWS))
    parquet.write_table(pyarrow.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    from_parquet = custom(str(tmp_path / "rows.parquet"))
    in_python = custom(ROWS)
    for task in (from_parquet, in_python):
        assert [(r.prompt, r.answer, r.columns) for r in task.train] == [(r.prompt, r.answer, r.columns) for r in jsonl.train]
    assert jsonl.train[0].columns == {k: v for k, v in ROWS[jsonl.train[0].number - 1].items() if k != "prompt"}
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                                   "test": datasets.Dataset.from_list(ROWS[8:])})
    splits.save_to_disk(str(tmp_path / "saved"))
    for saved in (custom(str(tmp_path / "saved")), custom(splits)):
        assert [r.prompt for r in saved.train] == [r["prompt"] for r in ROWS[:8]]
        assert [r.prompt for r in saved.eval] == [r["prompt"] for r in ROWS[8:]]  # its test split is the held-out one
    assert [r.prompt for r in custom(splits["train"], eval_data=splits["test"]).eval] == [r["prompt"] for r in ROWS[8:]]


def test_the_held_out_split_is_a_fixed_fraction_drawn_with_the_seed():
    a, b, c = custom(eval_fraction=0.3, seed=1), custom(eval_fraction=0.3, seed=1), custom(eval_fraction=0.3, seed=2)
    assert len(a.eval) == 3 and len(a.train) == 7
    assert [r.prompt for r in a.eval] == [r.prompt for r in b.eval]
    assert {r.prompt for r in a.eval} != {r.prompt for r in c.eval}
    assert not {r.prompt for r in a.eval} & {r.prompt for r in a.train}
    given = custom(eval_data=ROWS[:2])
    assert len(given.train) == 10 and [r.prompt for r in given.eval] == ["abc=", "bca="]


def test_bad_rows_stop_with_the_row_and_column_or_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ROWS[:4], ['{"prompt": "ab=", "answer": \n', '{"question": "x"}\n'])
    with pytest.raises(DataError, match=r"row 5: is not valid JSON"):
        custom(path)
    task = custom(path, skip_bad_rows=True)
    assert task.skipped["train"] == 2 and len(task.train) + len(task.eval) == 4
    with pytest.raises(DataError, match=r"row 2: column 'prompt' is missing or null \(the row has 'question'\)"):
        custom([ROWS[0], {"question": "x"}])
    with pytest.raises(DataError, match=r"row 1: column 'prompt' must be text or chat messages, got int"):
        custom([{"prompt": 3, "answer": "3"}, ROWS[0]])
    # the built-in model's warm-up imitates the reference; a pretrained model needs none
    with pytest.raises(DataError, match=r"row 2: column 'answer' \(the reference answer\) is missing"):
        custom([ROWS[0], {"prompt": "ab="}, ROWS[1]])
    assert custom([ROWS[0], {"prompt": "ab="}], pretrained_model=True, max_response_len=8).train
    with pytest.raises(DataError, match="holds no usable rows"):
        custom([{"prompt": 1, "answer": "a"}], skip_bad_rows=True)
    with pytest.raises(DataError, match=r"no row has a column 'prompt'; the rows have 'x'; set task.prompt_field"):
        custom([{"x": 1}], skip_bad_rows=True)  # a mapping to fix, not rows to skip
    with pytest.raises(DataError, match="chat messages need a pretrained model"):
        custom([{"prompt": [{"role": "user", "content": "hi"}], "answer": "a"}, ROWS[0]])


def test_the_built_in_tokenizer_takes_the_rows_characters_after_its_own():
    from drpo.models.tokenizer import CHARACTERS, CharTokenizer

    task = custom()
    tokenizer = CharTokenizer(task.characters)
    assert tokenizer.encode("12") == CharTokenizer().encode("12")  # the fixed ids do not move
    assert tokenizer.vocab_size == 3 + len(CHARACTERS) + 3  # a, b, c
    assert tokenizer.decode(tokenizer.encode("cab=")) == "cab="
    assert task.max_prompt_len == 5 and task.max_response_len == 4  # BOS + "abc=", "cba" + EOS


# ------------------------------------------------------------------------------------------ rewards
def test_weighted_rewards_with_none_combine_as_trl_combines_them():
    def half(completions, **kwargs):
        return [None if c == "" else 0.5 for c in completions]

    task = custom(reward=[exact, half], reward_weights=[1.0, 2.0])
    rows = task.train[:3]
    scores = task.score([rows[0].answer, "zz", ""], rows)
    # exact: 1, 0, 0; half: 0.5, 0.5, None -> 1 + 2 x 0.5, 0 + 2 x 0.5, 0 (only exact applies)
    assert scores.rewards == [2.0, 1.0, 0.0]
    assert scores.metrics["reward/exact/mean"] == pytest.approx(1 / 3) and scores.metrics["reward/half/mean"] == 0.5
    assert math.isnan(combine([[math.nan], [math.nan]], [1.0, 1.0])[0])  # no function applies: no reward
    none = custom(reward=lambda completions, **kw: [None] * len(completions))
    assert math.isnan(none.score(["x"], none.train[:1]).rewards[0])
    assert none.score(["x"], none.train[:1]).metrics["reward/unscored_frac"] == 1.0


def test_a_response_no_reward_applies_to_is_out_of_the_baseline_with_advantage_zero():
    rewards = torch.tensor([1.0, 0.0, math.nan, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    for estimator in ("grpo", "rloo"):
        for std in (False, True):
            got = group_advantages(rewards, groups, estimator, std)
            kept = group_advantages(rewards[[0, 1, 3, 4, 5]], groups[[0, 1, 3, 4, 5]], estimator, std)
            assert got[2] == 0.0 and torch.allclose(got[[0, 1, 3, 4, 5]], kept)
    assert group_advantages(rewards, groups)[:2].tolist() == [0.5, -0.5]


def test_columns_prompts_and_conversational_completions_reach_the_reward_as_in_trl():
    seen = {}

    def spy(prompts, completions, completion_ids, level, solution, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, level=level, solution=solution,
                    kwargs=sorted(kwargs))
        return [0.0] * len(completions)

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse ab"}]
    task = custom([{"prompt": messages, "solution": "ba", "level": 2}, {"prompt": "plain", "solution": "x"}],
                  reward=spy, pretrained_model=True, max_response_len=8, eval_data=ROWS[:1])
    task.score(["ba", "y"], task.train, completion_ids=[[5, 6], [7]])
    assert seen["prompts"] == [messages, "plain"] and seen["ids"] == [[5, 6], [7]]
    assert seen["completions"] == [[{"role": "assistant", "content": "ba"}], "y"]
    assert seen["level"] == [2, None] and seen["solution"] == ["ba", "x"] and "log_metric" in seen["kwargs"]
    assert task.train[0].prompt == "Reverse ab" and task.train[0].messages[0]["role"] == "system"


def test_a_reward_without_kwargs_gets_what_it_names_and_a_missing_column_is_named():
    def strict(completions, answer):
        return exact(completions, answer)

    task = custom(reward=strict)
    assert task.score([task.train[0].answer], task.train[:1]).rewards == [1.0]

    def wants(completions, solution):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"'wants' needs solution, which is no column.*columns answer, level"):
        custom(reward=wants).score(["x"], custom().train[:1])


def test_trls_own_accuracy_reward_runs_as_it_is():
    pytest.importorskip("math_verify")
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    rows = [{"prompt": [{"role": "user", "content": "1/3 as a fraction?"}], "solution": r"\frac{1}{3}"}] * 2
    task = custom(rows, reward=accuracy_reward, pretrained_model=True, max_response_len=8)
    assert task.rewards[0].style == "trl"
    assert task.score([r"so \boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], task.train + task.eval).rewards == [1.0, 0.0]


def test_verl_compute_score_is_detected_and_called_per_completion():
    calls = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        calls.append((data_source, ground_truth, extra_info))
        return {"score": float(solution_str == ground_truth), "length": len(solution_str)}

    rows = [{"prompt": "ab=", "data_source": "toy", "reward_model": {"ground_truth": "ba"}, "extra_info": {"i": 0}},
            {"prompt": "bc=", "answer": "cb"}]
    task = custom(rows, reward=compute_score, pretrained_model=True, max_response_len=4, eval_data=rows[:1])
    assert task.rewards[0].style == "verl"
    scores = task.score(["ba", "cb"], task.train)
    assert scores.rewards == [1.0, 1.0] and scores.metrics["reward/compute_score/length"] == 2.0
    assert calls == [("toy", "ba", {"i": 0}), ("custom", "cb", None)]  # else the answer column is the ground truth

    def score(data_source, solution_str, ground_truth, **kwargs):  # named explicitly: verl
        return float(solution_str == ground_truth)

    task = custom(reward=score, reward_style="verl")
    row = task.train[0]
    assert task.rewards[0].style == "verl" and task.score([row.answer, "x"], [row, row]).rewards == [1.0, 0.0]


def test_a_failing_reward_names_the_function_sample_and_exception_and_most_of_a_batch_stops_the_run():
    def fragile(completions, **kwargs):
        return [1.0 / (len(c) - 1) for c in completions]  # a one-character completion divides by zero

    task = custom(reward=fragile)
    rows = task.train[:4]
    with pytest.warns(UserWarning, match=r"'fragile' failed on 1 of 4 samples; sample 2 .*completion 'x'\): "
                                         r"ZeroDivisionError"):
        scores = task.score(["ab", "abc", "x", "abcd"], rows)
    assert scores.rewards[:2] == [1.0, 0.5] and math.isnan(scores.rewards[2])
    assert scores.metrics["reward/fragile/errors"] == 1.0
    with pytest.raises(RewardError, match=r"'fragile' failed on 3 of 4 samples; sample 0 .*ZeroDivisionError.*"
                                          r"Most of the batch failed"):
        task.score(["a", "b", "c", "abcd"], rows)
    with pytest.raises(RewardError, match=r"'short' returned 1 values; it must return a list of 2"):
        RewardFunction(lambda completions, **kw: [1.0], "short")(["a", "b"], rows[:2], None, {})
    with pytest.raises(RewardError, match=r"returned 'yes' \(str\)"):
        RewardFunction(lambda completions, **kw: ["yes"], "text")(["a"], rows[:1], None, {})


def test_reward_references_load_from_modules_and_files(tmp_path):
    (tmp_path / "my_rewards.py").write_text("def exact(completions, answer, **kwargs):\n"
                                            "    return [float(c == a) for c, a in zip(completions, answer)]\n")
    assert load_function(f"{tmp_path / 'my_rewards.py'}:exact")(["a"], ["a"]) == [1.0]
    assert load_function("math:sqrt")(4.0) == 2.0
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module'"):
        load_function("no_such_module:f")
    with pytest.raises(ValueError, match=r"has no 'nope'; its functions: exact"):
        load_function(f"{tmp_path / 'my_rewards.py'}:nope")


# ------------------------------------------------------------------------------------------ config
def test_custom_config_keys_lists_and_their_errors():
    config = load_config(None, ["task=custom", "data=rows.jsonl", "task.reward=[a:f,b:g]", "task.reward_weights=[1,0.5]",
                                "rollout.stop=[</answer>]", "report_to=[tensorboard,wandb]"])
    assert config.task.reward == ["a:f", "b:g"] and config.task.reward_weights == [1.0, 0.5]
    assert config.rollout.stop == ["</answer>"] and config.report_to == ["tensorboard", "wandb"]
    assert load_config(None, ["task=custom", "task.reward=a:f"]).task.reward == ["a:f"]
    assert load_config(None, ["tensorboard=false"]).report_to == ["none"]  # the key of configs written before
    with pytest.raises(ConfigError, match="2 weights for 1 reward functions"):
        load_config(None, ["task=custom", "task.reward=a:f", "task.reward_weights=[1,2]"])
    with pytest.raises(ConfigError, match="must be module:function"):
        load_config(None, ["task=custom", "task.reward=nocolon"])
    with pytest.raises(ConfigError, match="apply only to task=custom, not to task=arith: reward"):
        load_config(None, ["task.reward=a:f"])
    with pytest.raises(ConfigError, match="apply only to task=math, not to task=custom: prompt_template"):
        load_config(None, ["task=custom", "task.prompt_template={prompt}!"])
    with pytest.raises(ConfigError, match="report_to"):
        load_config(None, ["report_to=mlflow"])


def test_report_to_wandb_without_wandb_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'drpo\[wandb\]'"):
        load_config(None, ["report_to=wandb"])


# ------------------------------------------------------------------------------------------ stop strings
def test_stop_strings_cut_a_response_at_the_token_that_completes_one():
    from drpo.models.sampling import StopStrings

    pieces = {0: "ab", 1: "c</", 2: "s>x", 3: "d"}
    stop = StopStrings(["</s>"], lambda ids: "".join(pieces[i] for i in ids))
    tokens = [torch.tensor([0, 3]), torch.tensor([1, 3]), torch.tensor([2, 3])]
    alive = torch.tensor([True, True])
    assert stop.ended(tokens[:2], alive).tolist() == [False, False]
    assert stop.ended(tokens, alive).tolist() == [True, False]
    assert stop.ended(tokens, torch.tensor([False, True])).tolist() == [False, False]  # only live rows end
    assert stop.cut("abc</s>x") == "abc</s>" and stop.cut("abc") == "abc"


def test_sampled_stop_strings_keep_exactly_the_tokens_mu_recorded():
    from drpo.behavior import SamplingParams
    from drpo.behavior.native import NativeBehavior
    from drpo.models.log_probs import sequence_log_probs
    from drpo.models.sampling import StopStrings
    from drpo.models.tokenizer import CharTokenizer
    from drpo.models.transformer import build_model

    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    model = build_model("tiny", tokenizer.vocab_size, block_size=32).eval()
    behavior = NativeBehavior(model, mode="fp32")
    strings = ["1", "5", "2="]
    prompts = [tokenizer.encode(p, bos=True) for p in ("12+3=", "4,5>", "9")]
    sampling = SamplingParams(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, generator=torch.Generator().manual_seed(0),
                              stop=StopStrings(strings, tokenizer.decode))
    batch = behavior.generate(prompts, group_size=16, max_new_tokens=12, sampling=sampling)
    mask = batch.response_mask
    kept = mask.sum(-1).long()
    assert torch.equal(mask, (torch.arange(mask.shape[1]) < kept[:, None]).float())  # a prefix of each row
    stopped = 0
    for row, n in zip(batch.response_ids.tolist(), kept.tolist(), strict=True):
        text, before = tokenizer.decode(row[:n], stop_at_eos=False), tokenizer.decode(row[:n - 1], stop_at_eos=False)
        assert not any(s in before for s in strings)  # nothing kept past a stop string
        if n < 12 and row[n - 1] != tokenizer.eos_id:
            assert any(text.endswith(s) for s in strings)  # the last kept token completed one
            stopped += 1
        assert all(t == tokenizer.pad_id for t in row[n:])
    assert stopped >= 10, stopped
    recomputed = sequence_log_probs(behavior.model, batch).log_prob
    assert torch.allclose(batch.rollout_log_prob, recomputed, atol=1e-5)  # on the kept tokens; both 0 after
    assert torch.all(batch.rollout_log_prob[mask == 0] == 0)


def test_evaluation_stops_as_the_rollouts_do():
    from drpo.models.policy import Policy
    from drpo.models.tokenizer import CharTokenizer
    from drpo.models.transformer import build_model

    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    policy = Policy(build_model("tiny", tokenizer.vocab_size, block_size=32), tokenizer, task=None, stop=("1",))
    texts = policy.generate_text([tokenizer.encode("12+3=", bos=True)], 16, 10, 1.0, torch.Generator().manual_seed(1))
    assert any(t.endswith("1") for t in texts) and all("1" not in t[:-1] for t in texts)


# ------------------------------------------------------------------------------------------ trackers
def wandb_history(run_dir: Path, rows: int) -> list[dict]:
    """The history rows of an offline W&B run, read from its .wandb file once it holds ``rows`` of them (W&B's
    service process writes the file after run.finish() returns)."""
    for _ in range(100):
        history = _read_wandb_history(Path(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))[0]))
        if len(history) >= rows:
            return history
        time.sleep(0.1)
    return history


def _read_wandb_history(path: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block, position, rows, pending = 32768, 7, [], b""  # the 7-byte header, then 32 KiB blocks
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a record header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


# ------------------------------------------------------------------------------------------ end to end
# not configs.CHEAP: a warm-up of 4 steps that the examples' summaries are checked on, one step of 2 x 2 responses
TINY_RUN = ["model=tiny", "warmup.steps=4", "warmup.target_accuracy=null", "steps=1", "rollout.prompts=2",
            "rollout.group_size=2", "updates_per_batch=1", "eval.prompts=4", "eval.samples=0"]


@pytest.mark.slow
def test_the_cli_trains_a_jsonl_file_with_a_trl_reward_module_and_logs_to_wandb(tmp_path, monkeypatch):
    from drpo.cli import main

    pytest.importorskip("wandb")
    for variable, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", tmp_path),
                            ("WANDB_CACHE_DIR", tmp_path / "wandb-cache"), ("WANDB_CONFIG_DIR", tmp_path / "wandb-config")):
        monkeypatch.setenv(variable, str(value))  # no network, nothing outside tmp
    (tmp_path / "rewards.py").write_text("def exact(completions, answer, **kwargs):\n"
                                         "    return [float(c == a) for c, a in zip(completions, answer)]\n")
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    code = main(["train", "task=custom", f"data={data}", f"task.reward={tmp_path / 'rewards.py'}:exact",
                 "report_to=[tensorboard,wandb]", "rollout.stop=[b]", f"out={tmp_path / 'run'}", *TINY_RUN])
    assert code == 0
    records = read_metrics(tmp_path / "run")
    assert "reward/exact/mean" in records[1] and records[1]["reward/unscored_frac"] == 0.0
    history = wandb_history(tmp_path / "run", 2)  # every metric of metrics.jsonl, at its step
    for record, logged in zip(records, history, strict=True):
        assert logged["_step"] == record["step"]
        assert {k: v for k, v in logged.items() if not k.startswith("_")} == pytest.approx(
            {k: v for k, v in record.items() if k != "step"})
    assert glob.glob(str(tmp_path / "run" / "tb" / "events.out.tfevents.*"))


def test_a_reward_failing_on_most_of_a_batch_stops_the_cli_with_its_message(tmp_path, capsys):
    from drpo.cli import main

    (tmp_path / "rewards.py").write_text("def broken(completions, **kwargs):\n    raise KeyError('solution')\n")
    code = main(["train", "task=custom", f"data={write_jsonl(tmp_path / 'rows.jsonl', ROWS)}",
                 f"task.reward={tmp_path / 'rewards.py'}:broken", "report_to=none", f"out={tmp_path / 'run'}",
                 *TINY_RUN])
    assert code == 3
    assert "'broken' failed on" in capsys.readouterr().err


def run_example(name: str, *overrides: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        module = __import__(name)
        return module.main(list(overrides))
    finally:
        sys.path.remove(str(EXAMPLES))
        sys.modules.pop(name, None)


def test_the_reverse_example_runs_on_a_tiny_budget(tmp_path):
    summary = run_example("train_reverse", f"out={tmp_path / 'reverse'}", "report_to=none", *TINY_RUN)
    assert summary["steps"] == 1 and summary["base_model"]["warmup_steps"] == 4


def test_the_python_api_takes_a_reward_object_and_reads_the_metrics(tmp_path):
    from drpo import RunConfig, train

    calls = []

    def counted(completions, answer, **kwargs):
        calls.append(len(completions))
        return exact(completions, answer)

    result = train(RunConfig(task={"eval_fraction": 0.2, "name": "custom"}), reward=counted, dataset=ROWS,
                   overrides=[f"out={tmp_path / 'api'}", "report_to=none", *TINY_RUN])
    assert result.metrics == read_metrics(tmp_path / "api") and result.series("reward/counted/mean")[0][0] == 1
    assert 4 in calls  # the rollout batch: 2 prompts x 2 samples, one call
    with pytest.raises(ValueError, match="config says task=sort"):
        train({"task": {"name": "sort"}}, reward=counted, dataset=ROWS)


@pytest.mark.slow
def test_the_smollm2_example_runs_one_step_on_a_tiny_chat_model(tmp_path):
    pytest.importorskip("gguf")
    from test_gguf import write_gguf

    write_gguf(tmp_path / "tiny.gguf")
    summary = run_example("smollm2_larger", f"model=gguf:{tmp_path / 'tiny.gguf'}", f"out={tmp_path / 'smol'}",
                          "report_to=none", "steps=1", "rollout.prompts=2", "rollout.group_size=2",
                          "task.max_response_len=4", "eval.prompts=2", "updates_per_batch=1")
    assert summary["steps"] == 1
