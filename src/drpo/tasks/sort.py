"""Sorting a list of digits: "5,1,3>" -> "1,3,5", or asked of a chat model: "Sort these digits ...: 5, 1, 3." """

from __future__ import annotations

from drpo.tasks.base import Example, Task
from drpo.tasks.chat import final_digit_list

CHAT_PROMPT = "Sort these digits in ascending order: {digits}. Answer with the sorted digits only, separated by commas."


class Sort(Task):
    """Sort ``length`` digits ascending (duplicates kept). Every output token needs a look over the whole list.

    ``chat=True`` phrases the problem for an instruct model (:data:`CHAT_PROMPT`) and rewards the last list of
    digits in its reply (drpo.tasks.chat.final_digit_list), whatever the separators.
    """

    name = "sort"

    def __init__(self, seed: int = 0, length: int = 5, n_train: int | None = None, n_eval: int = 500,
                 chat: bool = False, max_response_len: int | None = None) -> None:
        if length < 2:
            raise ValueError(f"sort: length must be >= 2, got {length}")
        self.length = length
        self.init_phrasing(chat, max_response_len, chat_default=8 + 2 * length)
        super().__init__(seed, n_train, n_eval)

    @property
    def universe_size(self) -> int:
        return 10**self.length

    def example(self, index: int) -> Example:
        digits = f"{index:0{self.length}d}"
        prompt = CHAT_PROMPT.format(digits=", ".join(digits)) if self.chat else ",".join(digits) + ">"
        return Example(prompt=prompt, answer=",".join(sorted(digits)))

    def extract(self, completion: str) -> str | None:
        return final_digit_list(completion)

    @property
    def max_prompt_len(self) -> int:
        return 1 + 2 * self.length  # BOS, digits and commas, ">"

    @property
    def compact_response_len(self) -> int:
        return 2 * self.length  # digits and commas, then EOS
