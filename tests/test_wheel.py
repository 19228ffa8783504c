"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual environment
outside it, recommends a delta for a log-prob dump (`drpo mismatch`) from the evidence it ships
(drpo/mismatch/evidence.json), with nothing of the checkout in reach.

The dependencies (torch, numpy, ...) are not installed again: a .pth file in the new environment appends this
environment's site-packages to its path. A path line of a .pth file does not process the .pth files in that
directory, so the checkout's editable drpo stays out of sight; the test checks that drpo comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from drpo.mismatch.format import write_log_probs

ROOT = Path(__file__).resolve().parents[1]


def run(args: list, cwd: Path, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_the_wheel_recommends_a_delta_outside_the_checkout(tmp_path):
    started = time.perf_counter()
    # the sources only (no build/, no egg-info left in the checkout), built without network or isolation
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist,
         source], cwd=tmp_path)
    (wheel,) = dist.glob("drpo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "drpo/mismatch/evidence.json" in names and "drpo/lab/evidence.py" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=tmp_path)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, numpy, rich, ...

    work = tmp_path / "work"  # outside the checkout, as a user's directory
    work.mkdir()
    where = run([python, "-c", "import drpo; print(drpo.__file__)"], cwd=work).strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    mu, pi = [0.5, 0.5, 0.1, 0.01, 0.9], [0.5, 0.58, 0.3, 0.01, 0.7]
    write_log_probs(work / "dump.jsonl", [{"rollout_log_prob": np.log(mu).tolist(), "old_log_prob": np.log(pi).tolist(),
                                           "step": step} for step in range(3)])
    printed = " ".join(run([venv / "bin" / "drpo", "mismatch", "dump.jsonl"], cwd=work).split())
    assert "Which delta for this mismatch?" in printed and "no delta recommendation" not in printed, printed
    assert "Recommended: delta = " in printed and "Evidence: docs/results/delta/results.json" in printed, printed
    elapsed = time.perf_counter() - started
    print(f"wheel built, installed and run in {elapsed:.1f} s")
    assert elapsed < 120, f"the wheel test took {elapsed:.0f} s"
