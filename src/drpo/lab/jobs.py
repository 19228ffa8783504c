"""`drpo compare`, stages 1 and 2: plan one job per (condition, method, seed) and decide what each run
directory is worth (new, resume, extend, done); sweep.yaml; the base models still to warm up.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from drpo.lab.archive import RunArchive, is_finished
from drpo.lab.methods import Method
from drpo.lab.runs import run_dir

RESERVED = ("out", "resume", "seed", "loss")  # set by compare itself, per run
SHARED_LOSS_KEYS = ("loss.aggregation", "loss.horizon")  # loss settings that are not the method's


@dataclass
class Job:
    condition: str
    method: Method
    seed: int
    overrides: list[str]  # everything but out= and resume=
    path: Path
    steps: int
    action: str = "new"  # new | resume | extend | done

    @property
    def name(self) -> str:
        return f"{self.condition}/{self.method.label}/seed{self.seed}"


def plan(out: Path, methods: list[Method], seeds: list[int], conditions: dict[str, dict],
         overrides: list[str]) -> list[Job]:
    """One job per (condition, seed, method), each with its action decided from its run directory."""
    from drpo.config import load_config

    _check_overrides(overrides)
    archive = RunArchive(out)
    jobs, conflicts = [], []
    for condition, spec in conditions.items():
        for seed in seeds:
            for method in methods:
                args = [*spec["overrides"], *overrides, *method.overrides(), f"seed={seed}"]
                path = run_dir(out, condition, method.slug, seed)
                config = load_config(None, [*args, f"out={path}"])  # validates before any work starts
                job = Job(condition, method, seed, args, path, config.steps)
                job.action, conflict = _action(archive.files(path), (path / "checkpoints" / "latest.pt").is_file(),
                                               config)
                jobs.append(job)
                if conflict:
                    conflicts.append(f"{job.name}: {conflict}")
    if conflicts:
        raise ValueError(f"{len(conflicts)} run directories were made with a different config; use another --out "
                         "or remove them:\n  " + "\n  ".join(conflicts[:10]))
    return jobs


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.split(".")[0] in RESERVED and key not in SHARED_LOSS_KEYS:
            raise ValueError(f"override '{item}': compare sets {', '.join(RESERVED)} per run; choose losses with "
                             "--methods (e.g. drpo:delta=0.3), seeds with --seeds, the directory with --out")


def _action(files: dict[str, str], checkpoint: bool, config) -> tuple[str, str | None]:
    """(new | resume | extend | done, a conflict message or None) for one run, from its files (on disk or
    archived: RunArchive.files) and whether it has a checkpoint. A field added to the config since the run
    was made counts as unchanged at its default, so a sweep resumes across versions."""
    from drpo.config import config_changes

    if "config.yaml" not in files:
        return "new", None
    stored = yaml.safe_load(files["config.yaml"])
    changed = [key for key in config_changes(stored, config) if key not in ("out", "resume")]
    if [key for key in changed if key != "steps"]:
        if not checkpoint and "summary.json" not in files:
            return "new", None  # nothing worth keeping: start over
        return "new", f"differs in {', '.join(changed)}"
    summary = json.loads(files["summary.json"]) if "summary.json" in files else None
    if is_finished(summary):
        if summary.get("stopped") or stored["steps"] == config.steps:
            return "done", None
        if stored["steps"] < config.steps and checkpoint:
            return "extend", None
        return "new", f"finished with steps={stored['steps']}, asked for steps={config.steps}"
    return ("resume", None) if checkpoint else ("new", None)


def reset_run_dir(path: Path) -> None:
    """A run directory that starts over: drop what an earlier, unresumable attempt left (metrics append)."""
    for name in ("config.yaml", "metrics.jsonl", "log_probs.jsonl", "summary.json", "error.txt"):
        (path / name).unlink(missing_ok=True)
    for name in ("tb", "plots", "checkpoints"):
        shutil.rmtree(path / name, ignore_errors=True)


def write_grid(out: Path, methods: list[Method], seeds: list[int], conditions: dict[str, dict],
               overrides: list[str], target: float | None) -> dict:
    """sweep.yaml: the resolved grid. An earlier grid with the same overrides is extended (union), so a
    sweep can be run a condition or a method at a time into the same directory."""
    grid = {"methods": {}, "conditions": {}, "seeds": [], "overrides": list(overrides), "target": target}
    path = out / "sweep.yaml"
    if path.is_file():
        old = yaml.safe_load(path.read_text())
        if old.get("overrides") == list(overrides):
            grid.update(methods=old["methods"], conditions=old["conditions"], seeds=old["seeds"])
            grid["target"] = target if target is not None else old.get("target")
    for m in methods:
        grid["methods"][m.label] = {**m.to_dict(), "slug": m.slug, "canonical": m.canonical}
    grid["conditions"].update({name: dict(spec) for name, spec in conditions.items()})
    grid["seeds"] = sorted(set(grid["seeds"]) | set(seeds))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return grid


def base_models_to_warm(jobs: list[Job]) -> dict[str, list[str]]:
    """{cache key: overrides of one job using it} for the built-in base models not yet cached."""
    from drpo.config import load_config
    from drpo.models.gguf import is_pretrained_name
    from drpo.paths import cache_dir
    from drpo.warmup import base_model_key

    warm = {}
    for job in jobs:
        config = load_config(None, job.overrides)
        if is_pretrained_name(config.model.name):  # pretrained models have no warm-up
            continue
        key = base_model_key(config)
        if key not in warm and not (cache_dir() / "base" / f"{key}.pt").exists():
            warm[key] = job.overrides
    return warm
