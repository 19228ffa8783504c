"""Sorting a list of digits: "5,1,3>" -> "1,3,5"."""

from __future__ import annotations

from drpo.tasks.base import Example, Task


class Sort(Task):
    """Sort ``length`` digits ascending (duplicates kept). Every output token needs a look over the whole list."""

    name = "sort"

    def __init__(self, seed: int = 0, length: int = 5, n_train: int | None = None, n_eval: int = 500) -> None:
        if length < 2:
            raise ValueError(f"sort: length must be >= 2, got {length}")
        self.length = length
        super().__init__(seed, n_train, n_eval)

    @property
    def universe_size(self) -> int:
        return 10**self.length

    def example(self, index: int) -> Example:
        digits = f"{index:0{self.length}d}"
        return Example(prompt=",".join(digits) + ">", answer=",".join(sorted(digits)))

    @property
    def max_prompt_len(self) -> int:
        return 1 + 2 * self.length  # BOS, digits and commas, ">"

    @property
    def max_response_len(self) -> int:
        return 2 * self.length  # digits and commas, then EOS
