"""Multi-digit addition: "347+85=" -> "432", or asked of a chat model: "What is 347 + 85? ..." -> "... 432"."""

from __future__ import annotations

from drpo.tasks.base import Example, Task
from drpo.tasks.chat import final_number

CHAT_PROMPT = "What is {a} + {b}? Answer with the number only."


class Arith(Task):
    """a+b with a, b uniform in [0, 10**digits); the answer is the decimal sum, most significant digit first.

    Carries make the high digits depend on every lower digit, so the model must propagate them while
    writing left to right: hard enough that a short supervised warm-up leaves room for RL. The default,
    2 digits, is what the small model half-learns in a few hundred supervised steps on a CPU.

    ``chat=True`` phrases the problem as a question for an instruct model (:data:`CHAT_PROMPT`) and rewards
    the final number of its reply (drpo.tasks.chat.final_number), whatever words surround it;
    ``max_response_len`` is then a token budget for the reply.
    """

    name = "arith"

    def __init__(self, seed: int = 0, digits: int = 2, n_train: int | None = None, n_eval: int = 500,
                 chat: bool = False, max_response_len: int | None = None) -> None:
        if digits < 1:
            raise ValueError(f"arith: digits must be >= 1, got {digits}")
        self.digits = digits
        self.init_phrasing(chat, max_response_len, chat_default=16)
        super().__init__(seed, n_train, n_eval)

    @property
    def universe_size(self) -> int:
        return 10 ** (2 * self.digits)

    def example(self, index: int) -> Example:
        a, b = divmod(index, 10**self.digits)
        prompt = CHAT_PROMPT.format(a=a, b=b) if self.chat else f"{a}+{b}="
        return Example(prompt=prompt, answer=str(a + b))

    def extract(self, completion: str) -> str | None:
        return final_number(completion)

    @property
    def max_prompt_len(self) -> int:
        return 1 + 2 * self.digits + 2  # BOS, two operands, "+" and "="

    @property
    def compact_response_len(self) -> int:
        return self.digits + 1 + 1  # a possible carry digit, then EOS
