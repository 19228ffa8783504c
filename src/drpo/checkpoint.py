"""Atomic checkpoints that load without running code.

The state is written to a temporary file in the same directory, flushed to disk, then renamed over
``latest.pt`` (rename is atomic on POSIX file systems), and the directory is flushed so the rename itself
survives a power cut; the previous latest is kept as ``previous.pt``.

A checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``:
resuming from a run directory someone else made cannot execute code. RNG states are stored that way too
(:func:`global_rng_state`). :func:`resume_state` loads a run's latest checkpoint and checks it against the resumed
run's config; a run resumed into another directory starts there with the earlier run's history
(:func:`copy_history`). A file of an older drpo, which pickled NumPy's RNG state, is refused with the
command that converts it (:func:`upgrade_checkpoint`, for files you trust).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from drpo.config import check_resume
from drpo.mismatch.dump import DUMP_FILE

LATEST = "latest.pt"
PREVIOUS = "previous.pt"


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    latest = directory / LATEST
    tmp = _write_temporary(latest, state)
    if latest.exists():
        os.replace(latest, directory / PREVIOUS)
    os.replace(tmp, latest)
    _fsync_directory(directory)
    return latest


def load_checkpoint(directory: str | Path) -> dict:
    directory = Path(directory)
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if path.exists():
            return load_state_file(path)
    raise FileNotFoundError(f"no checkpoint in {directory}: expected {LATEST} (is this a run directory made by "
                            "`drpo train`?)")


def resume_state(config) -> dict:
    """The state a run resumed with ``config`` (``config.resume``: a run directory) continues from, refused before
    anything is written when the checkpoint was made with other settings (drpo.config.check_resume names them)."""
    state = load_checkpoint(Path(config.resume) / "checkpoints")
    check_resume(state["config"], config)
    return state


# what a run resumed into another directory takes along: the loggers then drop what came after the checkpoint
HISTORY = ("metrics.jsonl", DUMP_FILE, "tb")


def copy_history(resumed: str | Path, run_dir: str | Path) -> None:
    """Copy the metrics, the log-prob dump and the TensorBoard events of run ``resumed`` into ``run_dir``, so a run
    continued elsewhere (``resume=OLD out=NEW``) is whole in NEW and OLD stays as it was. Nothing when they are the
    same directory."""
    resumed, run_dir = Path(resumed), Path(run_dir)
    if resumed.resolve() == run_dir.resolve():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in HISTORY:
        source = resumed / name
        if source.is_dir():
            shutil.copytree(source, run_dir / name, dirs_exist_ok=True)
        elif source.exists():
            shutil.copyfile(source, run_dir / name)


def load_state_file(path: str | Path) -> dict:
    """torch.load with weights_only=True; a file that needs more than that gets an error, never an unpickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds more than tensors and plain values, so it is not loaded (unpickling it could run "
            f"code). A checkpoint of an older drpo (NumPy RNG state pickled) converts once, if you trust its "
            f"source: python -m drpo.checkpoint {path}\n(torch: {str(error).splitlines()[0]})") from None


def global_rng_state() -> dict:
    """torch, Python and NumPy global RNG states as tensors and plain values (weights_only loads them)."""
    numpy = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key": uint32 array, "pos"}, ...}
    numpy["state"]["key"] = numpy["state"]["key"].tolist()
    return {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "numpy_rng": numpy}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    numpy = state["numpy_rng"]
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": np.asarray(numpy["state"]["key"], np.uint32)}})


def upgrade_checkpoint(path: str | Path) -> None:
    """Rewrite a checkpoint of an older drpo in the weights_only format, in place.

    Only for a file you trust: reading the old format is an unpickle, which can run code.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)  # explicitly asked for, on a trusted file
    numpy = state.get("numpy_rng")
    if isinstance(numpy, tuple):  # np.random.get_state(): ("MT19937", key, pos, has_gauss, gauss)
        name, key, pos, has_gauss, gauss = numpy
        state["numpy_rng"] = {"bit_generator": name, "state": {"key": key.tolist(), "pos": int(pos)},
                              "has_gauss": int(has_gauss), "gauss": float(gauss)}
    path = Path(path)
    os.replace(_write_temporary(path, state), path)
    _fsync_directory(path.parent)
    load_state_file(path)  # what was written must load the safe way


def _write_temporary(path: Path, state: dict) -> Path:
    """``state`` written and flushed to a temporary file beside ``path``, for a rename over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _fsync_directory(directory: Path) -> None:
    """A rename is an entry of the directory: until the directory is flushed, a power cut can undo it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m drpo.checkpoint CHECKPOINT.pt   (converts an older drpo checkpoint you trust)")
    upgrade_checkpoint(sys.argv[1])
    print(f"converted {sys.argv[1]}: it now loads with weights_only=True")
