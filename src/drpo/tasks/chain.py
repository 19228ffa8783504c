"""A chain of additions and subtractions, worked step by step: the long-response task for chat models.

    "Start with 47. Add 8. Subtract 9. ... What is the result? ..."  ->  "We start with 47.
    Adding 8 gives 47 + 8 = 55. Next, 55 - 9 = 46. ... So the result is \\boxed{41}."

The answer is the final number; the reward reads it out of the reply (the last ``\\boxed{}``, else the last
integer: drpo.tasks.chat.final_number). What makes the reply long is the task, not an instruction: a small model
cannot carry ten operations in its head, so a reply that skips the steps is wrong far more often, and RL has
no reason to shorten it. :meth:`Chain.target` is a worked solution whose wording varies from step to step (a
few phrasings per line, drawn from the problem's own seed), so a model fine-tuned on it (``warmup.pretrained``)
samples its lines from a spread of openings: long, and not near-deterministic token by token.
"""

from __future__ import annotations

import random
import zlib

from drpo.tasks.base import Example, Task
from drpo.tasks.chat import final_number

CHAT_PROMPT = ("Start with {start}. {operations} What is the result? Work through the operations one at a time, "
               "then give the final answer in \\boxed{{}}.")
OPENINGS = ("We start with {start}.", "The starting number is {start}.", "Let's go one step at a time, starting "
            "from {start}.", "First, we begin at {start}.")
STEPS = {
    "+": ("Adding {x} gives {prev} + {x} = {new}.", "Next, {prev} + {x} = {new}.", "Then we add {x}: {prev} + {x} "
          "= {new}.", "{prev} plus {x} is {new}.", "After adding {x}, we have {prev} + {x} = {new}.",
          "Now add {x} to {prev} to get {new}."),
    "-": ("Subtracting {x} gives {prev} - {x} = {new}.", "Next, {prev} - {x} = {new}.", "Then we subtract {x}: "
          "{prev} - {x} = {new}.", "{prev} minus {x} is {new}.", "After subtracting {x}, we have {prev} - {x} = "
          "{new}.", "Now take {x} away from {prev} to get {new}."),
}
ENDINGS = ("So the result is \\boxed{{{answer}}}.", "The final result is \\boxed{{{answer}}}.",
           "Therefore, the answer is \\boxed{{{answer}}}.")


class Chain(Task):
    """A start in [10, 100), then ``terms`` operations, each adding or subtracting an operand of ``digits`` digits
    (1 to 10**digits - 1); running values may go below zero. Chat phrasing only: the reply is the reasoning.

    The universe is every (start, operations) combination, numbered in mixed radix, so distinct indices are
    distinct problems and the splits follow the base-class contract. ``max_response_len`` is the token budget
    (default 256: the worked solution of 10 one-digit operations is 150 to 204 SmolLM2 tokens, 179 on average).
    """

    name = "chain"

    def __init__(self, seed: int = 0, digits: int = 1, terms: int = 10, n_train: int | None = None,
                 n_eval: int = 500, chat: bool = True, max_response_len: int | None = None) -> None:
        if not chat:
            raise ValueError("task=chain works its answer out in words: it needs chat phrasing (a pretrained model, "
                             "or task.phrasing=chat)")
        if digits < 1 or terms < 1:
            raise ValueError(f"chain: digits and terms must be >= 1, got digits={digits}, terms={terms}")
        self.digits, self.terms = digits, terms
        self.init_phrasing(chat, max_response_len, chat_default=256)
        super().__init__(seed, n_train, n_eval)

    @property
    def universe_size(self) -> int:
        return 90 * (2 * self.operand_values) ** self.terms

    @property
    def operand_values(self) -> int:
        return 10**self.digits - 1

    def operations(self, index: int) -> tuple[int, list[tuple[str, int]]]:
        """Problem ``index`` as its start and its (sign, operand) operations."""
        index, start = divmod(index, 90)
        operations = []
        for _ in range(self.terms):
            index, code = divmod(index, 2 * self.operand_values)
            sign, operand = divmod(code, self.operand_values)
            operations.append(("+-"[sign], operand + 1))
        return start + 10, operations

    def example(self, index: int) -> Example:
        start, operations = self.operations(index)
        words = " ".join(f"{'Add' if sign == '+' else 'Subtract'} {x}." for sign, x in operations)
        answer = start + sum(x if sign == "+" else -x for sign, x in operations)
        return Example(prompt=CHAT_PROMPT.format(start=start, operations=words), answer=str(answer))

    def target(self, example: Example) -> str:
        """A worked solution, one operation per line; the wording is drawn from the prompt's checksum, so each
        problem has one fixed target and the problems together use every phrasing."""
        rng = random.Random(zlib.crc32(example.prompt.encode()))
        start, operations = parse_prompt(example.prompt)
        lines, value = [rng.choice(OPENINGS).format(start=start)], start
        for sign, x in operations:
            new = value + x if sign == "+" else value - x
            lines.append(rng.choice(STEPS[sign]).format(prev=value, x=x, new=new))
            value = new
        lines.append(rng.choice(ENDINGS).format(answer=value))
        return "\n".join(lines)

    def extract(self, completion: str) -> str | None:
        return final_number(completion)

    @property
    def max_prompt_len(self) -> int:
        return len(CHAT_PROMPT) + self.terms * (len("Subtract . ") + self.digits)  # characters: a bound on tokens


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """The start and the operations of a prompt :data:`CHAT_PROMPT` wrote."""
    head, _, rest = prompt.partition(". ")
    operations = []
    for sentence in rest.split(". "):
        verb, _, number = sentence.partition(" ")
        if verb not in ("Add", "Subtract") or not number.isdigit():
            break
        operations.append(("+" if verb == "Add" else "-", int(number)))
    return int(head.removeprefix("Start with ")), operations
