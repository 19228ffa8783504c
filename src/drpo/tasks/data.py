"""Rows of a data file, numbered for messages: JSON lines (``.jsonl``), a JSON list (``.json``) or Parquet.

    for number, row, reason in read_rows(Path("train.jsonl")):   # reason: why the row cannot be decoded, or None
        ...

Read through rows.py, the one parser of the tasks that read data (math.py, custom.py), which raises
:class:`DataError` naming the file, the row and the column.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, and the row and field when there is one."""


def read_rows(path: Path, fields: tuple[str, ...] = ()):
    """(1-based row number, row, why it cannot be decoded or None); for JSON lines the number is the line's.

    ``fields``: the (dotted) fields the caller reads; of a Parquet file only their columns are read (all when empty).
    """
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, fields)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"data file {path} cannot be read: {error}") from None
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"data file {path} is not valid JSON: {error}") from None
        if not isinstance(rows, list):
            raise DataError(f"data file {path} must hold a JSON list of rows, got {type(rows).__name__}")
        yield from ((number, row, None) for number, row in enumerate(rows, start=1))
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line), None
        except json.JSONDecodeError as error:
            yield line_number, None, f"is not valid JSON ({error.msg.removesuffix(' at')} at column {error.colno})"  # "... starting at"


def _parquet_rows(path: Path, fields: tuple[str, ...]):
    try:
        import pyarrow.parquet as pq  # lazy: optional dependency (Parquet files)
    except ImportError as error:
        raise DataError(f"data file {path}: reading Parquet needs pyarrow (pip install pyarrow)") from error
    try:
        schema = pq.read_schema(path)
        columns = list(dict.fromkeys(f.split(".")[0] for f in fields))
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"data file {path} has no column {missing[0]!r} (field "
                            f"{next(f for f in fields if f.split('.')[0] == missing[0])!r}); columns: "
                            f"{', '.join(schema.names)}")
        table = pq.read_table(path, columns=columns or None)
    except DataError:
        raise
    except Exception as error:  # pyarrow raises several types for a damaged or non-Parquet file
        raise DataError(f"data file {path} cannot be read as Parquet: {error}") from None
    number = 0
    for batch in table.to_batches(max_chunksize=8192):  # rows as Python objects a chunk at a time
        for row in batch.to_pylist():
            number += 1
            yield number, row, None
