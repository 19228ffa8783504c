"""Tasks: deterministic disjoint splits, correct references, a verifier that never raises."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drpo.models import CharTokenizer
from drpo.tasks import SYNTHETIC_TASKS, TASKS, Example, get_task

TOK = CharTokenizer()
SMALL = dict(n_train=300, n_eval=50)


@pytest.fixture(params=SYNTHETIC_TASKS)
def task(request):
    return get_task(request.param, seed=0, **SMALL)


def test_registry_names_and_errors():
    assert set(TASKS) >= {"arith", "sort", "math"}
    with pytest.raises(ValueError, match="arith, sort"):
        get_task("chess")
    with pytest.raises(ValueError, match="valid options: digits"):
        get_task("arith", digts=2)
    with pytest.raises(ValueError, match="exceeds"):
        get_task("arith", digits=1, n_train=100, n_eval=1)


def test_splits_are_deterministic_and_disjoint(task):
    again = get_task(task.name, seed=0, **SMALL)
    other = get_task(task.name, seed=1, **SMALL)
    assert (again.train, again.eval) == (task.train, task.eval)
    assert other.train != task.train
    assert (len(task.train), len(task.eval)) == (SMALL["n_train"], SMALL["n_eval"])
    train, evaluation = {e.prompt for e in task.train}, {e.prompt for e in task.eval}
    assert len(train) == len(task.train) and len(evaluation) == len(task.eval)
    assert not train & evaluation


def test_examples_fit_the_stated_lengths(task):
    for example in task.train + task.eval:
        assert len(TOK.encode(example.prompt, bos=True)) <= task.max_prompt_len
        assert len(TOK.encode(task.target(example))) + 1 <= task.max_response_len  # + EOS
    assert max(len(TOK.encode(e.prompt, bos=True)) for e in task.train) == task.max_prompt_len


def test_arith_references():
    task = get_task("arith", digits=4, **SMALL)
    for example in task.train:
        a, b = example.prompt.rstrip("=").split("+")
        assert example.answer == str(int(a) + int(b)) and max(len(a), len(b)) <= 4
    assert (task.max_prompt_len, task.max_response_len) == (11, 6)


def test_sort_references():
    task = get_task("sort", length=4, **SMALL)
    for example in task.train:
        digits = example.prompt.rstrip(">").split(",")
        assert len(digits) == 4 and example.answer == ",".join(sorted(digits))


@pytest.mark.parametrize("completion", ["", "   ", "garbage", "\x00", "ünïcödé ∑", "12" * 10_000, None, 432])
def test_reward_of_malformed_completions_is_zero(task, completion):
    assert task.reward(completion, task.eval[0]) == 0.0


def test_reward_of_correct_and_wrong_completions(task):
    example = task.eval[0]
    assert task.reward(task.target(example), example) == 1.0
    assert task.reward(example.answer + example.answer, example) == 0.0
    assert task.reward(example.answer[:-1], example) == 0.0
    assert task.reward("7", Example("3+4=", "7")) == 1.0


ALL_TASKS = [get_task(name, **SMALL) for name in SYNTHETIC_TASKS]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=50))
def test_reward_never_raises(text):
    for task in ALL_TASKS:
        example = task.eval[0]
        assert task.reward(text, example) == (1.0 if text == example.answer else 0.0)
