"""The character tokenizer shared by every small synthetic task.

One fixed vocabulary for all tasks, so a base model warm-started on one task has the same embedding
table shape as any other and checkpoints never depend on which task built the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2: PAD must be 0 so zero-filled buffers are padding
CHARACTERS = "0123456789+-*=,<> "


class CharTokenizer:
    """One token per character of :data:`CHARACTERS`, after the special tokens PAD (0), BOS (1), EOS (2).

    >>> tok = CharTokenizer()
    >>> tok.encode("12+3=")
    [4, 5, 13, 6, 16]
    >>> tok.decode([4, 5, 13, 6, 16, tok.eos_id, 7])
    '12+3='
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __init__(self, extra_characters: str = "") -> None:
        # a custom task's own characters come after the fixed ones, so those keep their ids
        characters = CHARACTERS + "".join(sorted(set(extra_characters) - set(CHARACTERS)))
        self._id_of = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(characters)}
        self._char_of = {i: c for c, i in self._id_of.items()}
        self.characters = characters

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.characters)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of ``text``, with BOS first when ``bos``; raises ValueError on a character outside the vocabulary."""
        ids = [self.bos_id] if bos else []
        for position, char in enumerate(text):
            if char not in self._id_of:
                raise ValueError(f"CharTokenizer cannot encode {char!r} (position {position} of {text!r}); "
                                 f"the vocabulary is {self.characters!r} plus {', '.join(SPECIAL_TOKENS)}")
            ids.append(self._id_of[char])
        return ids

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
        """Text of ``ids``: special tokens are dropped, and with ``stop_at_eos`` nothing after the first EOS is kept."""
        chars = []
        for token in ids:
            token = int(token)
            if token == self.eos_id and stop_at_eos:
                break
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token id {token} is outside the vocabulary (size {self.vocab_size})")
            if token in self._char_of:
                chars.append(self._char_of[token])
        return "".join(chars)
