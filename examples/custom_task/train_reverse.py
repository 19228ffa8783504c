"""Your own task from Python: reverse a short word, scored by two reward functions written right here.

    python examples/custom_task/train_reverse.py                 # the built-in small model, minutes on a CPU
    python examples/custom_task/train_reverse.py steps=2 warmup.steps=20 model=tiny   # any key=value override

The rewards use TRL's signature (``completions`` plus the dataset's columns as keyword lists), so they
would run unchanged in TRL's GRPOTrainer. The built-in model is character-level: its vocabulary grows by
the characters of the rows (here a to e), and its supervised warm-up imitates the ``answer`` column, so
rows for it need one (a pretrained model does not: see smollm2_larger.py).
"""

from __future__ import annotations

import random
import sys

from drpo import train

LETTERS = "abcde"


def make_rows(count: int, seed: int = 0) -> list[dict]:
    """``count`` distinct words of 3 to 5 letters: {"prompt": "abd=", "answer": "dba"}."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choices(LETTERS, k=rng.randint(3, 5))))
    return [{"prompt": word + "=", "answer": word[::-1]} for word in sorted(words)]


def exact(completions, answer, **kwargs) -> list[float]:
    """1 for the reversed word, else 0."""
    return [1.0 if completion == reference else 0.0 for completion, reference in zip(completions, answer, strict=True)]


def letters_in_place(completions, answer, **kwargs) -> list[float | None]:
    """Partial credit: the fraction of positions right; None ("does not apply") for an empty completion."""
    return [None if not completion else
            sum(x == y for x, y in zip(completion, reference, strict=False)) / max(len(completion), len(reference))
            for completion, reference in zip(completions, answer, strict=True)]


def main(overrides: list[str]) -> dict:
    config = {"out": "runs/reverse", "steps": 30, "loss": {"name": "drpo"},
              "task": {"reward_weights": [1.0, 0.5]}, "eval": {"every": 10, "prompts": 128}}
    result = train(config, reward=[exact, letters_in_place], dataset=make_rows(2000), overrides=overrides)
    start, final = (result.summary[f"eval/accuracy_{k}"] for k in ("start", "final"))
    print(f"mean greedy reward {start:.3f} -> {final:.3f} in {result.summary['steps']} steps; "
          f"exact-match reward of the last batch {result.series('reward/exact/mean')[-1][1]:.3f}; run: {result.run_dir}")
    return result.summary


if __name__ == "__main__":
    main(sys.argv[1:])
