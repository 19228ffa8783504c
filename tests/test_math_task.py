"""task=math: the boxed-answer reward (math-verify) on hand cases, and data files with clear errors."""

from __future__ import annotations

import json
import re
import time

import pytest

from drpo.config import ConfigError, load_config
from drpo.tasks.base import Example
from drpo.tasks.data import DataError
from drpo.tasks.math import MathTask, answers_match, last_boxed, load_examples

pytest.importorskip("math_verify", reason="task=math needs math-verify (pip install 'drpo[hf]')")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def task(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"What is {a}+1?", "answer": str(a + 1)} for a in range(6)])
    return MathTask(data=str(data), n_eval=2)


# ------------------------------------------------------------------------------------------------ reward
@pytest.mark.parametrize("completion, answer", [
    (r"so \boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{1/2}", r"\frac12"),
    (r"\boxed{\dfrac{1}{2}}", "1/2"),
    (r"The answer is $\boxed{34}$.", "34"),
    (r"\boxed{3\sqrt{2}}", r"\sqrt{18}"),
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{1,000}", "1000"),
])
def test_equivalent_forms_are_right(task, completion, answer):
    assert task.reward(completion, Example("?", answer)) == 1.0


@pytest.mark.parametrize("completion", [
    r"\boxed{35}", r"\boxed{-34}", r"\boxed{34.5}", r"\boxed{x}", r"\boxed{\frac{34}{2}}",
])
def test_wrong_answers_get_zero(task, completion):
    assert task.reward(completion, Example("?", "34")) == 0.0


@pytest.mark.parametrize("completion", [
    "34",  # no box
    "the answer is 34",
    r"\boxed{}",  # empty box
    r"\boxed{34",  # never closed: a truncated completion
    r"\boxed{34} and then \boxed{3",  # the last box is malformed: no answer
    r"\fbox{34}",
    "", None, 34, "\x00\ufffd" * 50,
])
def test_missing_or_malformed_box_gets_zero(task, completion):
    assert task.reward(completion, Example("?", "34")) == 0.0


def test_the_last_box_counts(task):
    example = Example("?", "7")
    assert task.reward(r"first \boxed{3}, no wait: \boxed{7}", example) == 1.0
    assert task.reward(r"\boxed{7} hmm, actually \boxed{3}", example) == 0.0


def test_nested_braces():
    assert last_boxed(r"\boxed{\frac{\sqrt{2}}{2}}") == r"\frac{\sqrt{2}}{2}"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces are text, not grouping
    assert last_boxed(r"\boxed {5}") == "5"
    assert answers_match(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")
    assert answers_match(r"\{1, 2\}", r"\{2, 1\}")


def test_reference_answers_as_numbers_and_text(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": 12}, {"q": "b", "a": " 0.25 "}, {"q": "c", "a": r"\frac{1}{3}"}])
    examples, counts = load_examples(data, prompt_field="q", answer_field="a")
    assert [e.answer for e in examples] == ["12", "0.25", r"\frac{1}{3}"]
    assert counts == {"bad_rows": 0, "duplicates": 0}
    assert answers_match("1/4", examples[1].answer) and not answers_match("0.33", examples[2].answer)


def test_verifier_timeout_gives_zero_quickly(monkeypatch):
    import math_verify

    def slow_verify(*args, **kwargs):
        time.sleep(5)
        return True

    monkeypatch.setattr(math_verify, "verify", slow_verify)
    start = time.perf_counter()
    assert answers_match("1", "1", timeout=0.2) is False
    assert time.perf_counter() - start < 2


# ------------------------------------------------------------------------------------------------ data
def test_jsonl_parquet_and_json_give_the_same_examples(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = [{"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"Problem {i}"}],
             "reward_model": {"ground_truth": str(i), "style": "rule"}} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    options = dict(prompt_field="prompt", answer_field="reward_model.ground_truth", prompt_template="Q: {prompt} {x}")
    loaded = [load_examples(tmp_path / f"d.{suffix}", **options)[0] for suffix in ("jsonl", "parquet", "json")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][1] == Example("Q: Problem 1 {x}", "1")  # the last user message; other braces stay literal


DAPO_STYLE = ("Solve the following math problem step by step. The last line of your response should be of the form "
              "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
              'Remember to put your answer on its own line after "Answer:".')
DAPO_PATTERN = r"^Solve the following math problem[^\n]*\n\n(.*)\n\nRemember to put your answer[^\n]*$"


def test_dapo_style_parquet_prompt_pattern_and_duplicates(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    problems = ["Find $x$.\n\nGiven $x+1=2$.", "Compute $\\frac{6}{3}$."]
    rows = [{"prompt": [{"role": "user", "content": DAPO_STYLE.replace("{problem}", p)}],
             "reward_model": {"ground_truth": str(i + 1)}} for i, p in enumerate(problems)] * 3
    rows.append({"prompt": [{"role": "user", "content": "no instructions here"}], "reward_model": {"ground_truth": "5"}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dapo.parquet")
    options = dict(answer_field="reward_model.ground_truth", prompt_pattern=DAPO_PATTERN)
    with pytest.raises(DataError, match="row 7: column 'prompt' does not match task.prompt_pattern"):
        load_examples(tmp_path / "dapo.parquet", **options)
    examples, counts = load_examples(tmp_path / "dapo.parquet", skip_bad_rows=True, **options)
    assert [e.prompt for e in examples] == problems  # the problem only; blank lines inside it kept
    assert counts == {"bad_rows": 1, "duplicates": 4}
    with pytest.raises(DataError, match="needs a group"):
        load_examples(tmp_path / "dapo.parquet", prompt_pattern="Solve")


def test_the_qwen_recipe_is_a_valid_config_and_cuts_dapo_prompts():
    from pathlib import Path

    recipe = Path(__file__).parents[1] / "examples" / "hf" / "qwen2.5-math-1.5b.yaml"
    config = load_config(recipe)
    assert config.model.name.startswith("hf:") and config.task.name == "math"
    assert config.loss.horizon == config.task.max_response_len
    pattern = re.compile(config.task.prompt_pattern, re.DOTALL)
    assert pattern.search(DAPO_STYLE.replace("{problem}", "Find $x$.\n\nIt is 2.")).group(1) == "Find $x$.\n\nIt is 2."


def test_eval_file_and_held_out_split(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"p{i}", "answer": str(i)} for i in range(10)])
    aime = write_jsonl(tmp_path / "aime.jsonl", [{"prompt": "hard", "answer": "42"}])
    with_file = MathTask(data=str(train), eval_data=str(aime))
    assert len(with_file.train) == 10 and with_file.eval == [Example(with_file.eval[0].prompt, "42")]
    held = MathTask(data=str(train), n_eval=3, seed=1)
    assert len(held.eval) == 3 and len(held.train) == 7
    assert not {e.prompt for e in held.eval} & {e.prompt for e in held.train}
    assert MathTask(data=str(train), n_eval=3, seed=1).eval == held.eval  # fixed by the seed


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], r"row 2: column 'answer' \(the reference answer\) is missing"),
    ([{"prompt": "a", "answer": "1"}, "{not json"], "row 2: is not valid JSON"),
    ([{"prompt": "a", "answer": "1"}, {"prompt": "", "answer": "1"}], "row 2: column 'prompt' is empty"),
    ([{"prompt": "a", "answer": None}], r"row 1: column 'answer' \(the reference answer\) is null"),
    ([{"prompt": "a", "answer": [1]}], r"row 1: column 'answer' \(the reference answer\) must be text or a number"),
    ([{"prompt": {"x": 1}, "answer": "1"}], "row 1: column 'prompt' must be text or chat messages"),
    (["[1, 2]"], "row 1: is a list"),
])
def test_bad_rows_name_the_file_row_and_field(tmp_path, rows, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as error:
        load_examples(data)
    assert str(data) in str(error.value) and "skip_bad_rows" in str(error.value)


def test_bad_rows_skipped_and_counted_when_asked(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1"}, "garbage", {"prompt": "b"},
                                              {"prompt": "c", "answer": "3"}, "", {"prompt": "d", "answer": "4"}])
    task = MathTask(data=str(data), skip_bad_rows=True, n_eval=1)
    assert task.skipped == {"train": 2, "eval": 0} and len(task.train) + len(task.eval) == 3
    assert task.duplicates == {"train": 0, "eval": 0}


def test_unusable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl holds no usable rows"):
        load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match="unknown format '.csv'"):
        load_examples(tmp_path / "d.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="broken.parquet cannot be read as Parquet"):
        load_examples(tmp_path / "broken.parquet")
    write_jsonl(tmp_path / "all_bad.jsonl", ["{", "{"])
    with pytest.raises(DataError, match=r"no usable rows \(2 bad rows skipped\)"):
        load_examples(tmp_path / "all_bad.jsonl", skip_bad_rows=True)


def test_parquet_missing_column_is_named(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist([{"problem": "a", "answer": "1"}]), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet has no column 'prompt' \(field 'prompt'\); columns: problem, answer"):
        load_examples(tmp_path / "d.parquet")


def test_a_nested_reference_missing_names_where_its_path_stops(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "reward_model": {"ground_truth": 1}},
                                              {"prompt": "b", "reward_model": {"style": "rule"}}])
    with pytest.raises(DataError, match=r"row 2: column 'reward_model.ground_truth' \(the reference answer\) is "
                                        r"missing \(reward_model has 'style'\)"):
        load_examples(data, answer_field="reward_model.ground_truth")
    examples, counts = load_examples(data, answer_field="reward_model.ground_truth", skip_bad_rows=True)
    assert examples == [Example("a", "1")] and counts == {"bad_rows": 1, "duplicates": 0}


# ------------------------------------------------------------------------------------------------ config
def test_config_keys_and_registry(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": f"p{i}", "sol": str(i)} for i in range(4)])
    config = load_config(None, ["task=math", f"data={data}", "task.prompt_field=question", "task.answer_field=sol",
                                "task.n_eval=1"])
    task = config.task.build(seed=0)
    assert len(task.train) == 3 and task.eval[0].prompt.endswith(r"put your final answer within \boxed{}.")
    with pytest.raises(ConfigError, match="task=math needs a data file"):
        load_config(None, ["task=math"])
    with pytest.raises(ConfigError, match="apply only to task=math.*data"):
        load_config(None, [f"data={data}"])
    with pytest.raises(ConfigError, match="must contain"):
        load_config(None, ["task=math", f"data={data}", "task.prompt_template=no placeholder"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_config(None, ["task=math", f"data={data}", "task.prompt_pattern=(unclosed"])


def test_verifier_errors_are_counted_not_taken_for_wrong_answers(task, monkeypatch):
    """A broken verifier (here an API change: TypeError) gives 0.0 but is counted; most of a batch failing stops."""
    import math_verify
    import sympy

    real_verify = math_verify.verify
    failing = set()

    def verify(gold, pred, **kwargs):
        if str(pred[0]) in failing:
            raise TypeError("verify() got an unexpected keyword argument")
        if str(pred[0]) == "7":
            raise sympy.SympifyError("7")  # a parse failure: a wrong answer, not an error
        return real_verify(gold, pred, **kwargs)

    monkeypatch.setattr(math_verify, "verify", verify)
    example = Example("What is 1+1?", "2")
    failing.add("3")
    rewards = [task.reward(rf"\boxed{{{answer}}}", example) for answer in ("2", "3", "7", "5")]
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert task.verifier_errors(4) == 1
    assert task.verifier_errors(4) == 0  # the count restarts
    failing.update({"4", "5"})
    for answer in ("2", "3", "4", "5"):
        task.reward(rf"\boxed{{{answer}}}", example)
    with pytest.raises(RuntimeError, match="failed on 3 of 4 answers.*TypeError"):
        task.verifier_errors(4)
