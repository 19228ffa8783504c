"""The per-token log-prob file: one record per sampled sequence, JSONL or parquet.

Every engine can write it; ``drpo mismatch`` reads it. A record (one JSON object per line, or one
parquet row) holds the response tokens of one sequence only (no prompt, no padding):

    field                    type                 required  meaning
    rollout_log_prob         list[float]  [T]     yes       log mu: the rollout engine's log-prob of each sampled token
    old_log_prob             list[float]  [T]     one of    log pi_old: the trainer's recomputed log-probs, same weights
    log_prob                 list[float]  [T]     these     log pi: the policy being trained, at its update
    advantage                float or list [T]    no        the advantage of the sequence (or of each token)
    step                     int                  no        training step (default 0): the report's trend axis
    policy_version           int                  no        version of the weights that sampled it (staleness)
    rollout_topk_ids         list[list[int]] [T,K]  no      mu's top-k token ids at each position
    rollout_topk_log_probs   list[list[float]] [T,K] no     their log mu (both or neither)
    id                       str                  no        a name for error messages (default: the line or row number)
    engine                   str                  no        where mu came from, e.g. "vllm bf16"

Names follow the loss contract of drpo.losses. Log-probs are natural logs, <= 0 and finite. Every record
of a file carries the same set of fields, so each statistic covers every token. The reader stops at the
first bad record and names it and the field: a missing field, lengths that disagree, NaN or inf, a
positive log-prob.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drpo.metrics import complete_lines

SEQUENCE_FIELDS = ("rollout_log_prob", "old_log_prob", "log_prob")  # [T] each
OPTIONAL_FIELDS = ("advantage", "step", "policy_version", "rollout_topk_ids", "rollout_topk_log_probs", "id",
                   "engine")
KNOWN_FIELDS = frozenset(SEQUENCE_FIELDS + OPTIONAL_FIELDS)
LOG_PROB_TOLERANCE = 1e-4  # float rounding can leave log(1) a hair above 0; the losses accept the same
SUFFIXES = (".jsonl", ".parquet")


class LogProbFileError(ValueError):
    """A bad log-prob file; the message names the file, the sequence and the field."""


@dataclass
class TokenLogProbs:
    """A file's sequences flattened to tokens: N tokens in S sequences, float64 throughout.

    ``seq_index`` maps each token to its sequence; per-sequence fields are repeated over its tokens.
    """

    label: str
    rollout_log_prob: np.ndarray  # [N] log mu
    old_log_prob: np.ndarray | None  # [N] log pi_old
    log_prob: np.ndarray | None  # [N] log pi
    advantage: np.ndarray | None  # [N]
    step: np.ndarray  # [N] int
    seq_index: np.ndarray  # [N] int
    num_sequences: int
    policy_version: np.ndarray | None = None  # [N] int
    rollout_topk_ids: np.ndarray | None = None  # [N, K] int
    rollout_topk_log_probs: np.ndarray | None = None  # [N, K]
    engines: list[str] = field(default_factory=list)
    path: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.rollout_log_prob)

    def fields(self) -> list[str]:
        names = ["rollout_log_prob", "old_log_prob", "log_prob", "advantage", "policy_version",
                 "rollout_topk_ids"]
        return [name for name in names if getattr(self, name) is not None]


def resolve_path(path: str | Path) -> Path:
    """A file, or a run directory holding the trainer's log_probs.jsonl."""
    path = Path(path)
    if path.is_dir():
        found = [path / f"log_probs{suffix}" for suffix in SUFFIXES if (path / f"log_probs{suffix}").exists()]
        if not found:
            raise FileNotFoundError(f"{path} holds no log_probs.jsonl or log_probs.parquet; run `drpo train "
                                    "dump_log_probs=true out=...` to write one, or pass the file itself")
        return found[0]
    if not path.exists():
        raise FileNotFoundError(f"log-prob file {path} does not exist")
    if path.suffix not in SUFFIXES:
        raise LogProbFileError(f"{path}: unknown format {path.suffix!r}; use .jsonl or .parquet")
    return path


def default_label(path: Path) -> str:
    """The run directory's name for a trainer dump (runs/bf16/log_probs.jsonl -> bf16), else the file's stem."""
    return path.parent.name if path.stem.startswith("log_probs") and path.parent.name else path.stem


def distinct_labels(paths: list[str]) -> list[str]:
    """The fewest trailing path parts that tell the sources apart: sweep/fp8/drpo/seed0 and sweep/bf16/drpo/seed0
    (their log_probs.jsonl) become fp8/drpo/seed0 and bf16/drpo/seed0; a single run keeps its directory name."""
    parts = [Path(p).parent.parts if Path(p).stem.startswith("log_probs") else Path(p).with_suffix("").parts
             for p in paths]
    depth = max((len(p) for p in parts), default=1)
    for k in range(1, depth + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same file twice


def read_log_probs(path: str | Path, label: str | None = None) -> TokenLogProbs:
    """Read and validate a log-prob file (or a run directory's dump) into a :class:`TokenLogProbs`.

    A FILE that several processes wrote, one FILE.rank<N>.<suffix> each (drpo.mismatch.dump), reads as one
    source: every rank's sequences, their ids prefixed with rank<N>/.
    """
    ranks = rank_files(Path(path))
    if ranks:
        records = ({**record, "id": f"{rank.stem.rpartition('.')[2]}/{record['id']}"}
                   for rank in ranks for record in _read_file(rank))
        return from_records(records, label or Path(path).stem, f"{path} ({len(ranks)} rank files)")
    path = resolve_path(path)
    return from_records(_read_file(path), label or default_label(path), str(path))


def rank_files(path: Path) -> list[Path]:
    """FILE.rank0.<suffix>, FILE.rank1.<suffix>, ... in rank order, when FILE itself does not exist."""
    if path.exists() or path.suffix not in SUFFIXES:
        return []
    found = [(p, p.stem.rpartition(".rank")[2]) for p in path.parent.glob(f"{path.stem}.rank*{path.suffix}")]
    return [p for p, rank in sorted(((p, int(r)) for p, r in found if r.isdigit()), key=lambda item: item[1])]


def _read_file(path: Path):
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_parquet(path)


def from_records(records, label: str, where: str = "records") -> TokenLogProbs:
    """Validate records (dicts in the file format) and flatten them to tokens."""
    columns: dict[str, list] = {name: [] for name in KNOWN_FIELDS}
    present: frozenset[str] | None = None
    first_name = ""
    steps, seq_index, engines = [], [], []
    count = 0
    for number, record in enumerate(records):
        name = str(record.get("id", number)) if isinstance(record, dict) else str(number)
        context = f"{where}: sequence {name!r}"
        if not isinstance(record, dict):
            raise LogProbFileError(f"{context}: a record must be an object of fields, got {type(record).__name__}")
        keys = frozenset(k for k, v in record.items() if v is not None)
        unknown = sorted(keys - KNOWN_FIELDS)
        if unknown:
            raise LogProbFileError(f"{context}: unknown field(s) {', '.join(unknown)}; known: "
                                   f"{', '.join(SEQUENCE_FIELDS + OPTIONAL_FIELDS)}")
        if "rollout_log_prob" not in keys:
            raise LogProbFileError(f"{context}: missing field 'rollout_log_prob' (log mu of the sampled tokens)")
        if not keys & {"old_log_prob", "log_prob"}:
            raise LogProbFileError(f"{context}: missing field 'old_log_prob' or 'log_prob': the trainer's "
                                   "log-probs of the same tokens, to compare mu with")
        if ("rollout_topk_ids" in keys) != ("rollout_topk_log_probs" in keys):
            raise LogProbFileError(f"{context}: 'rollout_topk_ids' and 'rollout_topk_log_probs' come together")
        checked = keys - {"id", "engine"}
        if present is None:
            present, first_name = checked, name
        elif checked != present:
            missing = sorted(present - checked) or sorted(checked - present)
            which = "missing" if present - checked else "has extra"
            raise LogProbFileError(f"{context}: {which} field(s) {', '.join(missing)} that sequence {first_name!r} "
                                   "has not; every sequence of a file needs the same fields")
        length = _check_sequence(record, context)
        for key in SEQUENCE_FIELDS + ("rollout_topk_ids", "rollout_topk_log_probs"):
            if key in keys:
                columns[key].append(record[key])
        if "advantage" in keys:
            advantage = record["advantage"]
            columns["advantage"].append(advantage if isinstance(advantage, list) else [advantage] * length)
        for key in ("step", "policy_version"):
            value = record.get(key, 0)
            if key in keys and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
                raise LogProbFileError(f"{context}: field {key!r} must be an integer, got {value!r}")
            if key == "step":
                steps.append(np.full(length, int(value)))
            elif key in keys:
                columns[key].append([int(value)] * length)
        if record.get("engine") is not None and record["engine"] not in engines:
            engines.append(str(record["engine"]))
        seq_index.append(np.full(length, count))
        count += 1
    if count == 0:
        raise LogProbFileError(f"{where}: no sequences")

    def flat(key, dtype=np.float64):
        return np.concatenate([np.asarray(v, dtype=dtype) for v in columns[key]]) if columns[key] else None

    return TokenLogProbs(
        label=label, rollout_log_prob=flat("rollout_log_prob"), old_log_prob=flat("old_log_prob"),
        log_prob=flat("log_prob"), advantage=flat("advantage"), step=np.concatenate(steps),
        seq_index=np.concatenate(seq_index), num_sequences=count,
        policy_version=flat("policy_version", np.int64), rollout_topk_ids=flat("rollout_topk_ids", np.int64),
        rollout_topk_log_probs=flat("rollout_topk_log_probs"), engines=engines, path=where)


def _check_sequence(record: dict, context: str) -> int:
    """The sequence's length T, once every per-token field has T finite values (log-probs <= 0)."""
    lengths = {}
    for key in SEQUENCE_FIELDS + ("advantage", "rollout_topk_ids", "rollout_topk_log_probs"):
        value = record.get(key)
        if value is None or (key == "advantage" and not isinstance(value, list)):
            continue
        if not isinstance(value, list):
            raise LogProbFileError(f"{context}: field {key!r} must be a list of numbers, got {type(value).__name__}")
        lengths[key] = len(value)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise LogProbFileError(f"{context}: lengths disagree: {shown} tokens")
    length = lengths["rollout_log_prob"]
    if length == 0:
        raise LogProbFileError(f"{context}: field 'rollout_log_prob' is empty; leave out sequences without tokens")
    for key in SEQUENCE_FIELDS + ("advantage",):
        value = record.get(key)
        if value is None:
            continue
        try:
            array = np.asarray(value if isinstance(value, list) else [value], dtype=np.float64)
        except (TypeError, ValueError):
            raise LogProbFileError(f"{context}: field {key!r} holds something that is not a number") from None
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            raise LogProbFileError(f"{context}: field {key!r} is {array[bad[0]]} at token {bad[0]} "
                                   f"({len(bad)} non-finite value(s)); log-probs of sampled tokens are finite")
        if key != "advantage" and array.max() > LOG_PROB_TOLERANCE:
            at = int(array.argmax())
            raise LogProbFileError(f"{context}: field {key!r} is {array[at]:.4g} at token {at}: log-probs are <= 0 "
                                   "(natural logs, not probabilities)")
    if "rollout_topk_ids" in record and record["rollout_topk_ids"] is not None:
        ids, values = record["rollout_topk_ids"], record["rollout_topk_log_probs"]
        widths = {len(row) for row in ids} | {len(row) for row in values}
        if len(widths) != 1:
            raise LogProbFileError(f"{context}: 'rollout_topk_ids' and 'rollout_topk_log_probs' need the same K "
                                   f"at every token, got widths {sorted(widths)}")
    return length


def _read_jsonl(path: Path):
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LogProbFileError(f"{path}: line {number} is not JSON ({error.msg})") from None
            if isinstance(record, dict) and "id" not in record:
                record["id"] = f"line {number}"
            yield record


def _read_parquet(path: Path):
    pq = _pyarrow_parquet()
    for number, record in enumerate(pq.read_table(path).to_pylist()):
        if record.get("id") is None:
            record["id"] = f"row {number}"
        yield record


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq  # lazy: optional dependency (parquet files; drpo[hf])
    except ImportError:
        raise LogProbFileError("parquet needs pyarrow: pip install pyarrow (or drpo[hf]); JSONL needs nothing") \
            from None
    return pq


class LogProbWriter:
    """Appends records to a .jsonl file (line by line) or a .parquet file (one row group per write).

    ``resume_step``: keep the records of an existing JSONL file up to that step (a resumed run rewrites
    the steps after its checkpoint); otherwise a new writer starts the file afresh.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if self.path.suffix not in SUFFIXES:
            raise LogProbFileError(f"{self.path}: unknown format {self.path.suffix!r}; use .jsonl or .parquet")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet = None
        if self.path.suffix == ".jsonl":
            kept = []
            if resume_step is not None and self.path.exists():
                kept = [line for line in complete_lines(self.path) if json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is not None:
            raise LogProbFileError("a resumed run appends to a .jsonl dump only; parquet files are written whole")

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        if self.path.suffix == ".jsonl":
            with self.path.open("a") as handle:
                handle.writelines(json.dumps(record, allow_nan=False) + "\n" for record in records)
            return
        import pyarrow as pa  # lazy: optional dependency (parquet files; drpo[hf])

        table = pa.Table.from_pylist(records)
        if self._parquet is None:
            self._parquet = _pyarrow_parquet().ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


def write_log_probs(path: str | Path, records: list[dict]) -> Path:
    """Write records (dicts in the file format) to a new .jsonl or .parquet file."""
    writer = LogProbWriter(path)
    writer.write(records)
    writer.close()
    return writer.path


def records_from_batch(rollout_log_prob, mask, *, old_log_prob=None, log_prob=None, advantages=None,
                       step: int = 0, policy_version: int | None = None, ids: list[str] | None = None,
                       engine: str | None = None) -> list[dict]:
    """Records of a padded batch: tensors [B, T] (advantages [B] or [B, T]), ``mask`` [B, T] 1 on response tokens.

    Rows without a response token are left out (the format has no empty sequences).
    """
    mask = _numpy(mask).astype(bool)  # [B, T]
    arrays = {"rollout_log_prob": rollout_log_prob, "old_log_prob": old_log_prob, "log_prob": log_prob}
    arrays = {k: _numpy(v).astype(np.float64) for k, v in arrays.items() if v is not None}  # [B, T] each
    adv = None if advantages is None else _numpy(advantages).astype(np.float64)  # [B] or [B, T]
    records = []
    for row in range(mask.shape[0]):
        keep = mask[row]
        if not keep.any():
            continue
        record: dict = {"id": ids[row] if ids is not None else f"{step}/{row}", "step": int(step)}
        if policy_version is not None:
            record["policy_version"] = int(policy_version)
        if engine is not None:
            record["engine"] = engine
        for key, array in arrays.items():
            record[key] = array[row][keep].tolist()
        if adv is not None:
            record["advantage"] = float(adv[row]) if adv.ndim == 1 else adv[row][keep].tolist()
        records.append(record)
    return records


def _numpy(x) -> np.ndarray:
    if not hasattr(x, "detach"):
        return np.asarray(x)
    x = x.detach().cpu()
    # numpy has no bfloat16; float32 holds bf16 and fp16 values exactly
    return (x.float() if x.is_floating_point() and x.element_size() < 4 else x).numpy()
