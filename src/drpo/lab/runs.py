"""Reading a sweep's files: the grid (sweep.yaml) and each finished run's metrics.jsonl, summary.json and
config.yaml, under SWEEP_DIR/runs/{condition}/{method}/seed{k}/ or in the sweep's runs archive
(drpo.lab.archive). Nothing here imports the trainer."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drpo.lab.archive import RunArchive, is_finished
from drpo.lab.collapse import as_number


@dataclass
class Run:
    condition: str
    method: str  # label
    seed: int
    path: Path
    records: list[dict]
    summary: dict
    config: dict = field(default_factory=dict)  # the run's resolved config.yaml ({} when absent)


def load_grid(sweep_dir: str | Path) -> dict:
    path = Path(sweep_dir) / "sweep.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {sweep_dir} a `drpo compare` sweep directory?")
    return yaml.safe_load(path.read_text())


def run_dir(sweep_dir: str | Path, condition: str, slug: str, seed: int) -> Path:
    return Path(sweep_dir) / "runs" / condition / slug / f"seed{seed}"


def parse_records(text: str) -> list[dict]:
    """metrics.jsonl's text -> one dict per step."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_runs(sweep_dir: str | Path, grid: dict) -> tuple[list[Run], list[str]]:
    """Finished runs of the grid, and the 'condition/method/seedK' names of the missing or unfinished ones."""
    runs, missing = [], []
    archive = RunArchive(sweep_dir)
    for condition in grid["conditions"]:
        for label, method in grid["methods"].items():
            for seed in grid["seeds"]:
                path = run_dir(sweep_dir, condition, method["slug"], seed)
                files = archive.files(path)
                summary = json.loads(files["summary.json"]) if "summary.json" in files else None
                if not is_finished(summary) or "metrics.jsonl" not in files:
                    missing.append(f"{condition}/{label}/seed{seed}")
                    continue
                config = yaml.safe_load(files["config.yaml"]) if "config.yaml" in files else {}
                runs.append(Run(condition, label, seed, path, parse_records(files["metrics.jsonl"]), summary, config))
    return runs, missing


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that logged ``key`` (non-finite values, logged as strings, included)."""
    return [(int(r["step"]), v) for r in records if (v := as_number(r.get(key))) is not None]


def seed_mean_curve(runs: list[Run], key: str, common: bool = False) -> list[tuple[int, float, float, float]]:
    """(step, mean, min, max) over the seeds that logged ``key`` at that step (``common``: all seeds did)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in series(run.records, key):
            by_step.setdefault(step, []).append(value)
    return [(step, statistics.fmean(v), min(v), max(v)) for step, v in sorted(by_step.items())
            if not common or len(v) == len(runs)]
