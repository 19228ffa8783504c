"""The task contract: fixed train/eval splits from a seed, and a verifier that never raises.

A task is a finite universe of problems numbered 0..universe_size-1. ``random.Random(seed).sample`` picks
``n_eval + n_train`` distinct numbers, the first ``n_eval`` form the eval split and the rest the train split:
the splits are disjoint by construction and depend only on (seed, options).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Example:
    prompt: str  # e.g. "347+85="
    answer: str  # e.g. "432": the reference completion, without EOS


class Scores(NamedTuple):
    rewards: list[float]  # one per completion; NaN: no reward applies to it (left out of its group's baseline)
    metrics: dict[str, float]  # e.g. reward/NAME/mean per reward function of task=custom


def distinct_indices(rng: random.Random, universe: int, k: int) -> list[int]:
    """``k`` distinct numbers of ``range(universe)`` in the order drawn: ``rng.sample`` where the universe fits a
    machine integer, else draws with rejection of repeats (a universe past 2**62 repeats one almost never)."""
    if universe < 2**62:
        return rng.sample(range(universe), k)
    seen: dict[int, None] = {}
    while len(seen) < k:
        seen.setdefault(rng.randrange(universe))
    return list(seen)


class Task:
    """Base of the verifiable tasks. Subclasses set ``name`` and implement ``universe_size`` and ``example``.

    ``max_prompt_len`` and ``max_response_len`` count tokens of the character tokenizer: the prompt with
    its BOS, the response with its EOS. A trainer can size the model's block as their sum.
    """

    name: str = ""

    def __init__(self, seed: int = 0, n_train: int | None = None, n_eval: int = 500) -> None:
        if n_train is None:  # default: up to 20000 training problems, fewer when the options allow fewer
            n_train = min(20000, self.universe_size - n_eval)
        if n_train < 1 or n_eval < 1:
            raise ValueError(f"{self.name}: n_train and n_eval must be >= 1, got {n_train} and {n_eval}")
        if n_train + n_eval > self.universe_size:
            raise ValueError(f"{self.name}: n_train + n_eval = {n_train + n_eval} exceeds the "
                             f"{self.universe_size} distinct problems of these options")
        self.seed = seed
        indices = distinct_indices(random.Random(seed), self.universe_size, n_eval + n_train)
        self.eval: list[Example] = [self.example(i) for i in indices[:n_eval]]
        self.train: list[Example] = [self.example(i) for i in indices[n_eval:]]

    @property
    def universe_size(self) -> int:
        raise NotImplementedError

    def example(self, index: int) -> Example:
        """Problem number ``index`` of the universe; distinct indices give distinct prompts."""
        raise NotImplementedError

    @property
    def max_prompt_len(self) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ phrasing: compact or chat
    chat: bool = False
    _chat_response_len: int | None = None

    def init_phrasing(self, chat: bool, max_response_len: int | None, chat_default: int) -> None:
        """Compact prompts for the character tokenizer, or questions for a chat model (with a token budget)."""
        if max_response_len is not None and not chat:
            raise ValueError(f"{self.name}: max_response_len applies to chat phrasing; the compact phrasing's "
                             "response length follows from the problem size")
        if max_response_len is not None and max_response_len < 1:
            raise ValueError(f"{self.name}: max_response_len must be >= 1, got {max_response_len}")
        self.chat = chat
        self._chat_response_len = max_response_len or chat_default

    @property
    def max_response_len(self) -> int:
        return self._chat_response_len if self.chat else self.compact_response_len

    @property
    def compact_response_len(self) -> int:
        raise NotImplementedError

    def extract(self, completion: str) -> str | None:
        """The final answer of a chat reply, in the form of ``Example.answer`` (None: no answer found)."""
        raise NotImplementedError

    def reward(self, completion: str, example: Example) -> float:
        """1.0 if the completion is right, else 0.0. Never raises.

        Compact phrasing: the completion (decoded, EOS and after removed) must be exactly the answer. Chat
        phrasing: the final answer read out of the reply (:meth:`extract`) must equal it.

        >>> from drpo.tasks import get_task
        >>> task, example = get_task("arith", n_train=10, n_eval=10), Example("347+85=", "432")
        >>> task.reward("432", example), task.reward(" 432", example), task.reward("4321", example)
        (1.0, 0.0, 0.0)
        >>> get_task("arith", n_train=10, n_eval=10, chat=True).reward("347 + 85 = 432.", example)
        1.0
        """
        if not isinstance(completion, str):
            return 0.0
        if self.chat:
            return 1.0 if self.extract(completion) == example.answer else 0.0
        return 1.0 if completion == example.answer else 0.0

    def score(self, completions: list[str], examples: list[Example],
              completion_ids: list[list[int]] | None = None) -> Scores:
        """Rewards of a batch of completions (``examples[i]`` is what ``completions[i]`` answers) and their metrics."""
        return Scores([self.reward(text, example) for text, example in zip(completions, examples, strict=True)], {})
    def verifier_errors(self, rewards: int) -> int:
        """How many of the last ``rewards`` rewards the verifier failed to compute (0.0 given instead of a verdict);
        the count restarts. A task whose verifier can fail raises when that is most of them."""
        return 0

    def target(self, example: Example) -> str:
        """The completion to imitate in supervised warm-up (the trainer appends EOS)."""
        return example.answer


class DataTask(Task):
    """A task whose problems are rows of data (math, custom): its constructor fills ``train`` and ``eval`` and
    sets the lengths ``_max_prompt_len`` and ``_max_response_len``, given or measured on the rows."""

    _max_prompt_len: int
    _max_response_len: int

    @property
    def max_prompt_len(self) -> int:
        return self._max_prompt_len

    @property
    def max_response_len(self) -> int:
        return self._max_response_len
