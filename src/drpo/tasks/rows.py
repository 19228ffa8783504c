"""The rows of task=custom: from a file, a ``datasets`` directory or Python objects, parsed into :class:`Row`.

    label, rows, held_out = read_source("train.jsonl", "data")   # numbered raw rows (and a held-out split)
    parsed, skipped = parse_rows(rows, label, "prompt", "answer", need_answer=False, skip_bad_rows=True)

What a row must hold, and what a bad row is, is in custom.py's docstring; errors are :class:`DataError`
naming the source, the row and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from drpo.tasks.base import Example
from drpo.tasks.data import DATA_SUFFIXES, DataError, read_rows

HELD_OUT_SPLITS = ("test", "validation")
NOT_COLUMNS = ("prompt", "completion", "completion_ids")  # TRL passes these under its own names, not as columns


@dataclass(frozen=True, eq=False)
class Row(Example):
    """One row: ``prompt`` is its text (the last user turn of chat messages), ``answer`` its reference or ''."""

    messages: tuple | None = None  # the prompt column's chat messages, as the chat template reads them
    columns: dict = field(default_factory=dict)  # every column of the row, passed to the reward functions
    number: int = 0  # 1-based row number in its source, for messages

    @property
    def reward_prompt(self):
        """The prompt as the reward functions see it: the text, or the list of messages."""
        return self.prompt if self.messages is None else list(self.messages)


def read_source(source, what: str) -> tuple[str, list, list | None]:
    """(label for messages, [(row number, row, why it cannot be decoded or None)], held-out rows or None)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _read_saved_dataset(path)
        if not path.is_file():
            raise DataError(f"{what} {path} does not exist")
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(f"{what} {path}: unknown format {path.suffix!r}; use {', '.join(DATA_SUFFIXES)} or a "
                            "directory written by datasets' save_to_disk")
        return f"{what} {path}", list(read_rows(path)), None
    if isinstance(source, dict) and source and all(hasattr(split, "to_list") for split in source.values()):
        return _split_dict(source, f"{what} (DatasetDict)")  # a DatasetDict: {split name: Dataset}
    if hasattr(source, "to_list"):  # a datasets.Dataset
        source = source.to_list()
    if isinstance(source, (list, tuple)):
        return f"{what} (Python rows)", [(number, row, None) for number, row in enumerate(source, start=1)], None
    raise DataError(f"{what}: expected a file, a datasets directory, a list of dicts or a datasets.Dataset, got "
                    f"{type(source).__name__}")


SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what datasets' save_to_disk writes at the top


def _read_saved_dataset(path: Path):
    if not any((path / name).is_file() for name in SAVED_DATASET_FILES):
        raise DataError(f"{path} is a directory, not a data file, and not a datasets save_to_disk directory (it has "
                        f"no {' or '.join(SAVED_DATASET_FILES)}); give a file ({', '.join(DATA_SUFFIXES)}) or a "
                        "directory written by datasets' save_to_disk")
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"{path} is a directory: reading a datasets save_to_disk directory needs datasets "
                        "(pip install datasets)") from error
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError or its own errors for a directory it did not write
        raise DataError(f"directory {path} is not a dataset written by save_to_disk: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return _split_dict(loaded, f"dataset {path}")
    return f"dataset {path}", [(n, row, None) for n, row in enumerate(loaded.to_list(), start=1)], None


def _split_dict(splits, label: str):
    if "train" not in splits:
        raise DataError(f"{label} has splits {', '.join(splits.keys())} but no 'train' split")
    held_out = next((splits[name] for name in HELD_OUT_SPLITS if name in splits), None)
    rows = [(n, row, None) for n, row in enumerate(splits["train"].to_list(), start=1)]
    return f"{label} split train", rows, None if held_out is None else held_out.to_list()


def parse_rows(rows: list, label: str, prompt_field: str, answer_field: str, need_answer: bool,
               skip_bad_rows: bool) -> tuple[list[Row], int]:
    """(the usable rows as Row, how many were skipped as bad); see the module docstring for what is bad."""
    absent = _absent_column(rows, prompt_field, "task.prompt_field", taken=answer_field) or (
        _absent_column(rows, answer_field, "task.answer_field", taken=prompt_field) if need_answer else None)
    if absent:
        raise DataError(f"{label}: {absent}")
    parsed, skipped = [], 0
    for number, row, reason in rows:
        try:
            if reason is not None:
                raise DataError(reason)
            parsed.append(_parse_row(row, number, prompt_field, answer_field, need_answer))
        except DataError as error:
            if not skip_bad_rows:
                raise DataError(f"{label} row {number}: {error} (set task.skip_bad_rows=true to skip and count "
                                "such rows)") from None
            skipped += 1
    if not parsed:
        raise DataError(f"{label} holds no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    return parsed, skipped


def _absent_column(rows: list, name: str, option: str, taken: str) -> str | None:
    """Why column ``name`` cannot be read, when no row has it (a mapping to fix, not rows to skip); else None.

    The suggestion is the first text column that ``taken`` (the other field) does not already read."""
    dicts = [row for _, row, reason in rows if reason is None and isinstance(row, dict)]
    if not dicts or any(name in row for row in dicts):
        return None
    columns = list(dict.fromkeys(key for row in dicts for key in row))
    text = [key for key in columns if isinstance(dicts[0].get(key), str) and key not in NOT_COLUMNS]
    suggestion = next((key for key in text if key != taken), None)
    return (f"no row has a column {name!r}; the rows have {', '.join(map(repr, columns))}"
            + (f": name the column to read with {option}={suggestion}" if suggestion else f"; set {option}=COLUMN"))


def _parse_row(row, number: int, prompt_field: str, answer_field: str, need_answer: bool) -> Row:
    if not isinstance(row, dict):
        raise DataError(f"is a {type(row).__name__}, not an object of columns")
    if row.get(prompt_field) is None:
        raise DataError(f"column {prompt_field!r} is missing or null (the row has {', '.join(map(repr, row)) or 'no columns'}); "
                        "task.prompt_field names the prompt column")
    value, messages = row[prompt_field], None
    if isinstance(value, list):
        if not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                                for m in value):
            raise DataError(f"column {prompt_field!r} is a list but not chat messages ({{'role': ..., 'content': "
                            "text}, ...)")
        users = [m["content"] for m in value if m["role"] == "user"]
        messages, value = tuple(dict(m) for m in value), (users[-1] if users else value[-1]["content"])
    if not isinstance(value, str):
        raise DataError(f"column {prompt_field!r} must be text or chat messages, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"column {prompt_field!r} is empty")
    answer = row.get(answer_field)
    if isinstance(answer, str | int | float) and not isinstance(answer, bool) and str(answer).strip():
        answer = str(answer)
    elif need_answer:
        raise DataError(f"column {answer_field!r} (the reference answer) is missing, empty or not text; the built-in "
                        "model's warm-up imitates it (task.answer_field names the column)")
    else:
        answer = ""
    columns = {k: v for k, v in row.items() if k not in NOT_COLUMNS}
    return Row(prompt=value, answer=answer, messages=messages, columns=columns, number=number)
