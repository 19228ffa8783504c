"""Tasks: deterministic disjoint splits, correct references, a verifier that never raises."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drpo.models import CharTokenizer
from drpo.tasks import SYNTHETIC_TASKS, TASKS, Example, get_task
from drpo.tasks.arith import CHAT_PROMPT as CHAT_ARITH
from drpo.tasks.chat import final_digit_list, final_number
from drpo.tasks.sort import CHAT_PROMPT as CHAT_SORT

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


# ------------------------------------------------------------------------------------------ chat phrasing
# replies of SmolLM2-135M-Instruct (greedy, 16-token budget) to the chat prompts, as the model wrote them
SMOLLM2_ARITH_REPLIES = [  # (a, b, reply, right?)
    (12, 26, "12 + 26 = 38", True),
    (79, 61, "79 + 61 = 140", True),
    (34, 36, "34 + 36 = 108", False),
    (42, 42, "42 + 42 = 164", False),
    (63, 11, "To solve this, we need to combine the 63 and 11", False),  # ran out of budget mid-explanation
    (6, 63, "The answer is 6 + 63, which is 6 + ", False),
    (5, 7, "The answer is 12.", True),
]
SMOLLM2_SORT_REPLIES = [  # (digits, reply, right?)
    ("776", "7, 7, 6", False),
    ("265", "2, 6, 5.", False),
    ("6311", "1, 2, 3, 4, 5, 6", False),
    ("7961", "7, 9, 1, 6, 1", False),
    ("864", "To sort these digits in ascending order, we can use the built-", False),
]


@pytest.mark.parametrize("a, b, reply, right", SMOLLM2_ARITH_REPLIES)
def test_chat_arith_reads_the_final_number_of_real_replies(a, b, reply, right):
    task = get_task("arith", n_train=10, n_eval=10, chat=True)
    example = Example(CHAT_ARITH.format(a=a, b=b), str(a + b))
    assert task.reward(reply, example) == float(right)


@pytest.mark.parametrize("digits, reply, right", SMOLLM2_SORT_REPLIES)
def test_chat_sort_reads_the_last_digit_list_of_real_replies(digits, reply, right):
    task = get_task("sort", n_train=10, n_eval=10, chat=True, length=len(digits))
    example = Example(CHAT_SORT.format(digits=", ".join(digits)), ",".join(sorted(digits)))
    assert task.reward(reply, example) == float(right)
    assert task.reward(f"Sorted: {', '.join(sorted(digits))}.", example) == 1.0


@pytest.mark.parametrize("reply, expected", [
    ("85", "85"), ("The answer is 85.", "85"), ("47 + 38 = 85", "85"), ("\\boxed{85}", "85"),
    ("\\boxed{85}, not 86", "85"),  # a box wins over later numbers
    ("The sum is 1,085.", "1085"), ("-3", "-3"), ("3.5", None), ("x2 = 7", "7"), ("no number", None), ("", None),
])
def test_final_number(reply, expected):
    assert final_number(reply) == expected


@pytest.mark.parametrize("reply, expected", [
    ("1, 3, 5", "1,3,5"), ("1,3,5", "1,3,5"), ("1 3 5", "1,3,5"), ("Sorted: 0, 4, 4, 9.", "0,4,4,9"),
    ("The digits 5, 1, 3 sorted are 1, 3, 5", "1,3,5"), ("\\boxed{1, 2, 3} then 9, 8", "1,2,3"),
    ("12, 3", "3"),  # a two-digit number is no digit of the list
    ("none", None),
])
def test_final_digit_list(reply, expected):
    assert final_digit_list(reply) == expected


def test_chat_phrasing_prompts_and_budget():
    arith = get_task("arith", n_train=10, n_eval=10, chat=True)
    assert arith.train[0].prompt.startswith("What is ") and arith.max_response_len == 16
    assert get_task("arith", n_train=10, n_eval=10, chat=True, max_response_len=24).max_response_len == 24
    assert get_task("sort", n_train=10, n_eval=10, chat=True, length=3).max_response_len == 14
    with pytest.raises(ValueError, match="max_response_len applies to chat phrasing"):
        get_task("arith", n_train=10, n_eval=10, max_response_len=24)
    # the same problems, phrased either way: the splits do not depend on the phrasing
    compact = get_task("arith", n_train=10, n_eval=10)
    assert [e.answer for e in compact.train] == [e.answer for e in arith.train]
