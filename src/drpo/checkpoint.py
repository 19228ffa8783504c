"""Atomic checkpoints: a kill mid-write never leaves a broken latest checkpoint.

The state is written to a temporary file in the same directory, flushed to disk, then renamed over
``latest.pt`` (rename is atomic on POSIX file systems); the previous latest is kept as ``previous.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LATEST = "latest.pt"
PREVIOUS = "previous.pt"


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    latest = directory / LATEST
    tmp = directory / f".{LATEST}.tmp-{os.getpid()}"
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if latest.exists():
        os.replace(latest, directory / PREVIOUS)
    os.replace(tmp, latest)
    return latest


def load_checkpoint(directory: str | Path) -> dict:
    directory = Path(directory)
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=False)
    raise FileNotFoundError(f"no checkpoint in {directory}: expected {LATEST} (is this a run directory made by "
                            "`drpo train`?)")
