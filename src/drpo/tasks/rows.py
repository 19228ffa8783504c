"""The rows of the data tasks (custom, math): from a file, a ``datasets`` directory or Python objects, parsed
into :class:`Row`. The one parser of rows; each task adds its own rules on top (math.py: a prompt pattern and
template, stripped answers, duplicates dropped).

    label, rows, held_out = read_source("train.jsonl", "data")   # numbered raw rows (and a held-out split)
    parsed, skipped = parse_rows(rows, label, "prompt", "answer", need_answer=None, skip_bad_rows=True)

What a row must hold, and what a bad row is, is in custom.py's docstring; a column name may be dotted for a
nested one (``reward_model.ground_truth``, as verl's files keep the reference). Errors are :class:`DataError`
naming the source, the row and the column.
"""

from __future__ import annotations

from collections.abc import Callable
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


def read_source(source, what: str, fields: tuple[str, ...] = ()) -> tuple[str, list, list | None]:
    """(label for messages, [(row number, row, why it cannot be decoded or None)], held-out rows or None).

    ``fields``: the (dotted) columns the caller reads; of a Parquet file only those are read (all when empty)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _read_saved_dataset(path)
        if not path.is_file():
            raise DataError(f"{what} {path} does not exist")
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(f"{what} {path}: unknown format {path.suffix!r}; use {', '.join(DATA_SUFFIXES)} or a "
                            "directory written by datasets' save_to_disk")
        return f"{what} {path}", list(read_rows(path, fields)), None
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
        import datasets  # lazy: optional dependency (drpo[datasets])
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


def parse_rows(rows: list, label: str, prompt_field: str, answer_field: str, need_answer: str | None,
               skip_bad_rows: bool, prompt_rule: Callable[[str], str] | None = None) -> tuple[list[Row], int]:
    """(the usable rows as Row, how many were skipped as bad); see the module docstring for what is bad.

    ``need_answer``: why every row needs a reference answer (said in the error of a row without one), or None
    where a row may have none (its ``answer`` is then ''). ``prompt_rule``: the task's own rule for a prompt's
    text, returning the prompt to keep; a :class:`DataError` it raises makes the row bad (stop, or skip and count).
    """
    absent = _absent_column(rows, prompt_field, "task.prompt_field", taken=answer_field) or (
        _absent_column(rows, answer_field, "task.answer_field", taken=prompt_field) if need_answer else None)
    if absent:
        raise DataError(f"{label}: {absent}")
    parsed, skipped = [], 0
    for number, row, reason in rows:
        try:
            if reason is not None:
                raise DataError(reason)
            parsed.append(_parse_row(row, number, prompt_field, answer_field, need_answer, prompt_rule))
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
    if not dicts or any(_lookup(row, name)[1] is None for row in dicts):
        return None
    columns = list(dict.fromkeys(key for row in dicts for key in row))
    text = [key for key in columns if isinstance(dicts[0].get(key), str) and key not in NOT_COLUMNS]
    suggestion = next((key for key in text if key != taken), None)
    return (f"no row has a column {name!r}; the rows have {', '.join(map(repr, columns))}"
            + (f": name the column to read with {option}={suggestion}" if suggestion else f"; set {option}=COLUMN"))


def _lookup(row: dict, name: str):
    """(the value of column ``name``, None), or (None, where the column is missing: 'the row has ...').

    A dotted name reads a nested column (``reward_model.ground_truth``) unless the row has it as one key."""
    if name in row:
        return row[name], None
    node, path = row, []
    for key in name.split("."):
        if not isinstance(node, dict) or key not in node:
            present = ", ".join(map(repr, node)) if isinstance(node, dict) else f"a {type(node).__name__}"
            return None, f"{'.'.join(path) or 'the row'} has {present or 'no columns'}"
        node = node[key]
        path.append(key)
    return node, None


def _parse_row(row, number: int, prompt_field: str, answer_field: str, need_answer: str | None,
               prompt_rule: Callable[[str], str] | None) -> Row:
    if not isinstance(row, dict):
        raise DataError(f"is a {type(row).__name__}, not an object of columns")
    value, missing = _lookup(row, prompt_field)
    if value is None:
        where = missing or f"the row has {', '.join(map(repr, row))}"
        raise DataError(f"column {prompt_field!r} is missing or null ({where}); task.prompt_field names the prompt "
                        "column")
    messages = None
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
    if prompt_rule is not None:
        value = prompt_rule(value)
    answer, missing = _lookup(row, answer_field)
    problem = (f"is missing ({missing})" if missing else "is null" if answer is None
               else f"must be text or a number, got {type(answer).__name__}"
               if isinstance(answer, bool) or not isinstance(answer, str | int | float)
               else "is empty" if not str(answer).strip() else None)
    if problem is None:
        answer = str(answer)
    elif need_answer:
        raise DataError(f"column {answer_field!r} (the reference answer) {problem}; {need_answer} "
                        "(task.answer_field names the column)")
    else:
        answer = ""
    columns = {k: v for k, v in row.items() if k not in NOT_COLUMNS}
    return Row(prompt=value, answer=answer, messages=messages, columns=columns, number=number)
