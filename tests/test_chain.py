"""task=chain: the long-response task. Its problems, worked solutions and reward, checked against arithmetic done
here independently; and warmup.pretrained, the fine-tuning that teaches a pretrained model its reply format."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drpo.config import ConfigError, load_config
from drpo.tasks import get_task
from drpo.tasks.base import Example, distinct_indices
from drpo.tasks.chain import OPENINGS, Chain, parse_prompt


def evaluate(prompt: str) -> int:
    """The prompt's result, read with a regex independent of the task's own parser."""
    start = int(re.match(r"Start with (\d+)\.", prompt).group(1))
    for verb, number in re.findall(r"(Add|Subtract) (\d+)\.", prompt):
        start += int(number) if verb == "Add" else -int(number)
    return start


@pytest.fixture(scope="module")
def chain():
    return get_task("chain", seed=3, n_train=300, n_eval=50, chat=True)


def test_every_answer_is_the_result_of_its_prompts_operations(chain):
    for example in chain.train + chain.eval:
        assert int(example.answer) == evaluate(example.prompt)
        assert len(re.findall(r"(Add|Subtract) \d+\.", example.prompt)) == chain.terms == 10


def test_the_worked_solution_scores_1_and_shows_every_running_value(chain):
    for example in chain.train[:100]:
        target = chain.target(example)
        assert chain.reward(target, example) == 1.0
        lines = target.splitlines()
        assert len(lines) == chain.terms + 2  # the start, one line per operation, the answer
        value = int(re.search(r"\d+", lines[0]).group())
        for line, (sign, x) in zip(lines[1:-1], parse_prompt(example.prompt)[1], strict=True):
            value = value + x if sign == "+" else value - x
            assert line.rstrip(".").endswith(str(value))  # each line ends on the running value


def test_a_reply_is_read_by_its_last_box_then_its_last_number(chain):
    example = Example(chain.train[0].prompt, chain.train[0].answer)
    right, wrong = example.answer, str(int(example.answer) + 1)
    assert chain.reward(f"... = {wrong}. So the result is \\boxed{{{right}}}.", example) == 1.0
    assert chain.reward(f"\\boxed{{{wrong}}} and then {right}", example) == 0.0
    assert chain.reward(f"We get {wrong}, no: {right}", example) == 1.0
    assert chain.reward("I do not know.", example) == 0.0


def test_the_wording_varies_across_problems_and_is_fixed_per_problem(chain):
    first_lines = [chain.target(ex).splitlines()[0] for ex in chain.train]
    used = {next(i for i, o in enumerate(OPENINGS) if line.startswith(o.split("{")[0])) for line in first_lines}
    assert used == set(range(len(OPENINGS)))
    assert [chain.target(ex) for ex in chain.train[:20]] == [chain.target(ex) for ex in chain.train[:20]]


def test_the_splits_are_disjoint_and_depend_on_the_seed_alone():
    a, b = (get_task("chain", seed=1, n_train=100, n_eval=20, terms=3, digits=1) for _ in range(2))
    assert [e.prompt for e in a.train] == [e.prompt for e in b.train]
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.eval}
    assert len({e.prompt for e in a.train + a.eval}) == 120


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 4), st.integers(1, 3))
def test_distinct_indices_are_problems_and_problems_are_distinct(index, terms, digits):
    task = Chain.__new__(Chain)
    task.terms, task.digits, task.chat = terms, digits, True
    index %= task.universe_size
    start, operations = task.operations(index)
    assert 10 <= start < 100 and len(operations) == terms
    assert all(1 <= x < 10**digits for _, x in operations)
    assert parse_prompt(task.example(index).prompt) == (start, operations)
    other = (index + 1) % task.universe_size
    assert task.example(other).prompt != task.example(index).prompt


def test_distinct_indices_past_a_machine_integer():
    drawn = distinct_indices(random.Random(0), 10**40, 500)
    assert len(set(drawn)) == 500 and all(0 <= i < 10**40 for i in drawn)
    assert drawn == distinct_indices(random.Random(0), 10**40, 500)


def test_chain_needs_chat_phrasing_and_terms_is_its_own_key():
    with pytest.raises(ValueError, match="chat phrasing"):
        get_task("chain", chat=False)
    config = load_config(None, ["model=smollm2-135m", "task=chain", "task.terms=3"])
    assert config.task.build(0, pretrained_model=True).terms == 3
    for overrides in (["task=chain"], ["model=smollm2-135m", "task=chain", "task.phrasing=compact"]):
        with pytest.raises(ConfigError, match="task=chain"):
            load_config(None, overrides)
    with pytest.raises(ConfigError, match="terms"):
        load_config(None, ["task=arith", "task.terms=3"])


# ------------------------------------------------------------------------------ warmup.pretrained, eval.engine
transformers = pytest.importorskip("transformers")


def tiny_hf_dir(tmp_path_factory):
    from test_hf import save_model

    return save_model(tmp_path_factory.mktemp("tiny_llama"), family="llama")


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory):
    directory = tiny_hf_dir(tmp_path_factory)
    rows = tmp_path_factory.mktemp("rows") / "train.jsonl"
    rows.write_text("".join(f'{{"prompt": "What is 1+{a % 3}?{" so" * (a // 3)}", "answer": "{a % 3 + 1}"}}\n'
                            for a in range(12)))
    return directory, rows


def target_log_prob(policy) -> float:
    """Mean log pi of the reference answers (+ EOS) of the train split: what the warm-up maximises."""
    import torch

    from drpo.models.log_probs import sequence_log_probs
    from drpo.models.sampling import make_batch

    examples = policy.task.train
    batch = make_batch([policy.encode_prompt(ex) for ex in examples],
                       [policy.tokenizer.encode(policy.task.target(ex)) + [policy.tokenizer.eos_id] for ex in examples],
                       pad_id=policy.tokenizer.pad_id)
    with torch.no_grad():
        log_prob = sequence_log_probs(policy.model, batch, 1.0).log_prob
    return float((log_prob * batch.response_mask).sum() / batch.response_mask.sum())


def test_warmup_pretrained_fine_tunes_the_model_once_and_caches_it(hf_setup):
    import torch

    from drpo.backends import build_policy

    directory, rows = hf_setup
    common = [f"model=hf:{directory}", "task=math", f"data={rows}", "task.n_eval=2"]
    fresh = build_policy(load_config(None, common))
    warm_overrides = [*common, "warmup.pretrained=true", "warmup.steps=30", "warmup.lr=0.01",
                      "warmup.target_accuracy=null", "warmup.batch_size=8"]
    warm = build_policy(load_config(None, warm_overrides))
    assert warm.base_info["warmup_steps"] == 30 and warm.base_info["cached"] is False
    assert target_log_prob(warm) > target_log_prob(fresh) + 0.5  # it imitated the reference answers
    again = build_policy(load_config(None, warm_overrides))
    assert again.base_info["cached"] is True and again.base_info["path"] == warm.base_info["path"]
    for a, b in zip(warm.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "warmup_steps" not in fresh.base_info  # without the flag a pretrained model is its own base model


def test_eval_engine_llamacpp_writes_the_trainers_greedy_replies_and_follows_its_weights(hf_setup):
    pytest.importorskip("llama_cpp")
    import torch

    from drpo.backends import build_policy

    directory, rows = hf_setup
    common = [f"model=hf:{directory}", "task=math", f"data={rows}", "task.n_eval=2", "task.max_response_len=12"]
    trainer = build_policy(load_config(None, common))
    served = build_policy(load_config(None, [*common, "eval.engine=llamacpp"]))
    prompts = [trainer.encode_prompt(ex) for ex in trainer.task.train]
    for step in range(3):
        assert served.generate_text(prompts, 1, 12, 0.0) == trainer.generate_text(prompts, 1, 12, 0.0)
        with torch.no_grad():  # an "update": both policies move the same way, the engine must serve the new weights
            for a, b in zip(trainer.model.parameters(), served.model.parameters(), strict=True):
                noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(step)) * 0.05
                a.add_(noise)
                b.add_(noise)
    with pytest.raises(ConfigError, match="eval.engine=llamacpp"):
        load_config(None, ["eval.engine=llamacpp"])  # the built-in model's default arch=gpt


def test_keys_added_since_leave_the_published_base_models_key_unchanged():
    """warmup.probe_prompts, warmup.pretrained, task.terms and eval.engine at their defaults: the default run's base
    model, recorded in docs/results/default/summary.json, is still the one the cache finds."""
    import json
    from pathlib import Path

    from drpo.warmup import base_model_key

    summary = json.loads((Path(__file__).parents[1] / "docs/results/default/summary.json").read_text())
    config = load_config(None, [])
    assert summary["base_model"]["path"].endswith(f"/{base_model_key(config, config.task.build(config.seed))}.pt")
