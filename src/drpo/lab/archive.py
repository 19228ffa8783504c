"""A sweep's finished runs in one compressed file, SWEEP_DIR/runs.tar.xz, so that a published sweep keeps
every run's files in the repository at a tenth of their size.

The archive holds each finished run's config.yaml, metrics.jsonl and summary.json, byte for byte, under
the run's path (runs/{condition}/{method}/seed{k}/...): ``tar xJf runs.tar.xz`` in SWEEP_DIR restores the
run directories. One file for all the runs because the logs of a sweep share much of their text: the
published sweeps' 310 distinct runs (42 MB of files) take 6.5 MB this way, against 9.6 MB gzipped file by
file (before a file-system block for each of the 930 files). Its bytes depend only on the runs' bytes
(sorted names, no times or owners), so packing unchanged runs rewrites nothing.

SWEEP_DIR/shared_runs.txt (optional) names other sweep directories, one per line, relative to this one,
whose archived runs this sweep also uses: a run found nowhere else is read from their archives at the
same path, and `pack` leaves out of this sweep's archive the runs one of them already holds byte for byte.
So two published sweeps that share runs store them once.

Where a run's files are read from (RunArchive.files): its directory on disk when that holds any of them
(unfinished runs, and every run of a sweep made in this checkout, live there), else this sweep's archive,
else the shared ones'.
"""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from pathlib import Path

ARCHIVE = "runs.tar.xz"
SHARED = "shared_runs.txt"
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


def read_archive(path: Path) -> dict[str, bytes]:
    """{member name: bytes} of a runs.tar.xz ({} when there is none)."""
    if not path.is_file():
        return {}
    with tarfile.open(path, "r:xz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def shared_sweeps(sweep_dir: Path) -> list[Path]:
    path = sweep_dir / SHARED
    if not path.is_file():
        return []
    return [sweep_dir / line.strip() for line in path.read_text().splitlines() if line.strip()]


class RunArchive:
    """The run files of one sweep, wherever they are (see the module docstring); archives read once."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        self._archived: dict[str, bytes] | None = None

    def archived(self) -> dict[str, bytes]:
        if self._archived is None:
            self._archived = read_archive(self.sweep_dir / ARCHIVE)
            for other in shared_sweeps(self.sweep_dir):
                for name, data in read_archive(other / ARCHIVE).items():
                    self._archived.setdefault(name, data)
        return self._archived

    def files(self, path: Path) -> dict[str, str]:
        """{file name: text} of the run directory ``path`` (under SWEEP_DIR/runs), for those it has."""
        on_disk = {name: (path / name).read_text() for name in RUN_FILES if (path / name).is_file()}
        if on_disk:
            return on_disk
        prefix = path.relative_to(self.sweep_dir).as_posix()
        archived = self.archived()
        return {name: archived[f"{prefix}/{name}"].decode() for name in RUN_FILES if f"{prefix}/{name}" in archived}


def is_finished(summary: dict | None) -> bool:
    """A run counts (and is reused) once its summary.json exists and does not say interrupted."""
    return summary is not None and not summary.get("interrupted")


def pack(sweep_dir: str | Path) -> bool:
    """Add the finished runs on disk under SWEEP_DIR/runs to SWEEP_DIR/runs.tar.xz (replacing their archived
    copies; a run a shared sweep's archive holds byte for byte is left out). Returns whether the archive
    changed. The run directories stay as they are."""
    sweep_dir = Path(sweep_dir)
    archived = read_archive(sweep_dir / ARCHIVE)
    shared: dict[str, bytes] = {}
    for other in shared_sweeps(sweep_dir):
        shared.update(read_archive(other / ARCHIVE))
    members = dict(archived)
    for summary in sorted((sweep_dir / "runs").glob("*/*/seed*/summary.json")):
        run = summary.parent
        if not is_finished(json.loads(summary.read_text())) or not (run / "metrics.jsonl").is_file():
            continue
        prefix = run.relative_to(sweep_dir).as_posix()
        files = {f"{prefix}/{name}": (run / name).read_bytes() for name in RUN_FILES if (run / name).is_file()}
        if all(shared.get(name) == data for name, data in files.items()):
            for name in files:
                members.pop(name, None)
        else:
            members.update(files)
    if members == archived:
        return False
    write_archive(sweep_dir / ARCHIVE, members)
    return True


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    """A tar.xz whose bytes depend only on ``members``: sorted, no times, owners or directory entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(members[name]), 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(path)
