"""Reading the final answer out of a chat model's free-form reply (``task.phrasing=chat``).

An instruct model asked "What is 47 + 38? Answer with the number only." answers "85", "The answer is 85.",
"47 + 38 = 85" or "\\boxed{85}"; and sometimes a wrong sum followed by a correction. The rule every
extractor below follows is the one math graders use: a ``\\boxed{...}`` wins when there is one (the last
box), otherwise the *last* candidate in the text is the answer, so "47 + 38 = 85" reads as 85, not 47.

    >>> final_number("47 + 38 = 85")
    '85'
    >>> final_number("The sum is 1,085.") , final_number("\\\\boxed{12} (not 13)"), final_number("no idea")
    ('1085', '12', None)
    >>> final_digit_list("Sorted: 1, 3, 5, 8.")
    '1,3,5,8'
"""

from __future__ import annotations

import re

from drpo.tasks.math import last_boxed

# an integer, with optional thousands separators ("1,085") and sign; not part of a longer word or decimal
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?!\.?\d)")
# a run of single digits separated by commas and/or spaces ("1, 3, 5" or "1 3 5" or "1,3,5")
_DIGIT_LIST = re.compile(r"(?<!\d)\d(?:\s*,\s*\d(?!\d)|\s+\d(?!\d))*(?!\d)")


def last_candidate(pattern: re.Pattern, text: str) -> str | None:
    """The last match of ``pattern`` in the last box of ``text`` if it has one, else in the whole text."""
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    candidates = pattern.findall(boxed if boxed is not None else text)
    return candidates[-1] if candidates else None


def final_number(text: str) -> str | None:
    """The answer as a canonical integer string: the last box's integer, else the last integer in ``text``."""
    number = last_candidate(_NUMBER, text)
    return None if number is None else str(int(number.replace(",", "")))


def final_digit_list(text: str) -> str | None:
    """The answer as digits joined by commas: the last box's digit list, else the last list of digits in ``text``."""
    digits = last_candidate(_DIGIT_LIST, text)
    return None if digits is None else ",".join(re.findall(r"\d", digits))
