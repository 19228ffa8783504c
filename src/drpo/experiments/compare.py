"""`drpo compare`: the off-policy stress test, a grid of methods x seeds x conditions.

    drpo compare                                             # every method and condition, 3 seeds
    drpo compare --methods drpo dppo_binary_tv cispo --conditions fp8 stale --seeds 2 steps=60
    drpo compare --methods drpo drpo:delta=0.3 spo --out runs/delta --workers 2
    drpo report runs/compare                                 # rebuild report.md from the runs

How a sweep runs, top to bottom:

1. plan: one job per (condition, method, seed); its trainer overrides are the condition's, then the
   command line's, then the method's ``loss=...``, then ``seed=K``. Every method of a (condition, seed)
   therefore starts from the same base model and sees the same prompts and sampling seeds.
2. reuse: a run directory whose summary.json says it finished is kept; one with a checkpoint is resumed
   (``resume=RUN_DIR``, exactly as `drpo train` resumes); a finished run asked for more steps is
   extended from its last checkpoint. A run directory made with a different config is an error, not
   silently reused.
3. warm up each distinct base model once (cached by config hash in $DRPO_CACHE), then the runs, each in
   its own spawned process (one torch thread each), ``workers`` at a time. Ctrl-C stops the workers
   politely (they checkpoint); the same command continues where it stopped.
4. report: drpo.experiments.report reads the run files and writes report.md, figures/, results.json.

Layout: SWEEP_DIR/sweep.yaml (the grid), SWEEP_DIR/runs/{condition}/{method}/seed{k}/ (normal run
directories, plus worker.log), SWEEP_DIR/report.md, SWEEP_DIR/figures/, SWEEP_DIR/results.json.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drpo.experiments.conditions import get_conditions
from drpo.experiments.methods import Method, parse_methods
from drpo.experiments.report import run_dir, write_report

RESERVED = ("out", "resume", "seed", "loss")  # set by compare itself, per run
SHARED_LOSS_KEYS = ("loss.aggregation", "loss.horizon")  # loss settings that are not the method's
EXIT_NON_FINITE = 3  # the worker's exit code when the trainer stopped on non-finite losses
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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


@dataclass
class Outcome:
    reused: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # non-finite: finished, counted as collapsed
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    report: Path | None = None

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)


# ----------------------------------------------------------------------------- planning
def plan(out: Path, methods: list[Method], seeds: list[int], conditions: dict[str, dict],
         overrides: list[str]) -> list[Job]:
    """One job per (condition, seed, method), each with its action decided from its run directory."""
    from drpo.config import load_config

    _check_overrides(overrides)
    jobs, conflicts = [], []
    for condition, spec in conditions.items():
        for seed in seeds:
            for method in methods:
                args = [*spec["overrides"], *overrides, *method.overrides(), f"seed={seed}"]
                path = run_dir(out, condition, method.slug, seed)
                config = load_config(None, [*args, f"out={path}"])  # validates before any work starts
                job = Job(condition, method, seed, args, path, config.steps)
                job.action, conflict = _action(path, config)
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


def _action(path: Path, config) -> tuple[str, str | None]:
    """(new | resume | extend | done, a conflict message or None) for one run directory."""
    stored_path, summary_path = path / "config.yaml", path / "summary.json"
    checkpoint = (path / "checkpoints" / "latest.pt").is_file()
    if not stored_path.is_file():
        return "new", None
    stored = yaml.safe_load(stored_path.read_text())
    wanted = config.model_dump(mode="json")
    changed = [key for key in _diff(stored, wanted) if key not in ("out", "resume")]
    if [key for key in changed if key != "steps"]:
        if not checkpoint and not summary_path.is_file():
            return "new", None  # nothing worth keeping: start over
        return "new", f"differs in {', '.join(changed)}"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary and not summary.get("interrupted"):
        if summary.get("stopped") or stored["steps"] == config.steps:
            return "done", None
        if stored["steps"] < config.steps and checkpoint:
            return "extend", None
        return "new", f"finished with steps={stored['steps']}, asked for steps={config.steps}"
    return ("resume", None) if checkpoint else ("new", None)


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [key for k in sorted(set(a) | set(b)) for key in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _reset(path: Path) -> None:
    """A run directory that starts over: drop what an earlier, unresumable attempt left (metrics append)."""
    for name in ("metrics.jsonl", "summary.json", "error.txt"):
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


# ----------------------------------------------------------------------------- the sweep
def run_sweep(out: str | Path = "runs/compare", methods: list[str] | None = None, seeds: int = 3,
              conditions: list[str] | None = None, overrides: list[str] = (), workers: int = 2,
              target: float | None = None, console=None) -> Outcome:
    """Plan, warm up the base models, run what is not finished, write the report."""
    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(out)
    methods_ = parse_methods(methods)
    conditions_ = get_conditions(conditions)
    if seeds < 1 or workers < 1:
        raise ValueError("--seeds and --workers must be at least 1")
    seed_list = list(range(seeds))
    jobs = plan(out, methods_, seed_list, conditions_, list(overrides))
    write_grid(out, methods_, seed_list, conditions_, list(overrides), target)

    outcome = Outcome(reused=[j.name for j in jobs if j.action == "done"])
    todo = [j for j in jobs if j.action != "done"]
    warm = _base_models_to_warm(todo)
    console.print(f"[bold]drpo compare[/]: {_count(len(methods_), 'method')} x {_count(len(seed_list), 'seed')} x "
                  f"{_count(len(conditions_), 'condition')} = {len(jobs)} runs -> {out}: "
                  f"{len(outcome.reused)} finished (reused), "
                  f"{sum(j.action in ('resume', 'extend') for j in todo)} to resume, "
                  f"{sum(j.action == 'new' for j in todo)} to start; {len(warm)} base model(s) to warm up; "
                  f"{workers} worker(s)")
    try:
        if warm:
            tasks = [(f"warm-up {name}", _warm_up_worker, (args,), None, None) for name, args in warm.items()]
            codes = _run_processes(tasks, workers, console)
            outcome.failed = [name for name, code in codes.items() if code != 0]
            if outcome.failed:
                console.print(f"[red]base-model warm-up failed[/] ({', '.join(outcome.failed)}): try one run with "
                              f"`drpo train` and the same overrides to see the error")
                return outcome
        for job in todo:
            if job.action == "new":
                _reset(job.path)
                outcome.started.append(job.name)
            else:
                outcome.resumed.append(job.name)
        tasks = [(job.name, _run_worker, (job.overrides, str(job.path), job.action != "new"), job.path, job.steps)
                 for job in todo]
        codes = _run_processes(tasks, workers, console)
    except KeyboardInterrupt:
        outcome.interrupted = True
        console.print(f"[yellow]interrupted[/]: unfinished runs checkpointed; run the same command to continue "
                      f"(finished runs are reused), or `drpo report {out}` for a report of what is done")
        return outcome
    for job in todo:
        code = codes.get(job.name)
        if code == 0:
            outcome.finished.append(job.name)
        elif code == EXIT_NON_FINITE:
            outcome.stopped.append(job.name)
        else:
            outcome.failed.append(job.name)
            console.print(f"[red]failed[/] {job.name} (exit {code}): see {job.path / 'error.txt'} and worker.log")
    outcome.report = write_report(out)
    verdict = json.loads((out / "results.json").read_text())["verdict"]
    for sentences in [*verdict["conditions"].values(), verdict["overall"]]:
        if sentences:
            console.print(" ".join(sentences), highlight=False)
    console.print(f"report: {outcome.report}")
    return outcome


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def split_cli_lists(methods: list[str] | None, conditions: list[str] | None,
                    overrides: list[str]) -> tuple[list[str] | None, list[str] | None, list[str]]:
    """argparse gives `--methods drpo spo steps=60` all to --methods: move key=value items (no ':' before
    the '=', unlike a method spec such as drpo:delta=0.3) back to the overrides."""
    def is_override(item: str) -> bool:
        key, sep, _ = item.partition("=")
        return bool(sep) and ":" not in key

    extra = [i for i in (methods or []) if is_override(i)] + [i for i in (conditions or []) if "=" in i]
    methods = [i for i in methods if not is_override(i)] if methods is not None else None
    conditions = [i for i in conditions if "=" not in i] if conditions is not None else None
    return methods or None, conditions or None, [*overrides, *extra]


def describe_grid() -> str:
    """The default methods and the condition presets, for `drpo compare --list`."""
    from drpo.experiments.conditions import CONDITIONS
    from drpo.experiments.methods import METHODS

    lines = ["methods (default: all; any registry name or preset, or NAME:key=value,... also works):"]
    for label, (loss, hyper) in METHODS.items():
        lines.append(f"  {label:<18} " + " ".join([f"loss={loss}", *(f"{k}={v}" for k, v in hyper.items())]))
    lines.append("conditions (default: all):")
    for name, spec in CONDITIONS.items():
        lines.append(f"  {name:<18} {' '.join(spec['overrides']) or '(no overrides)':<40} {spec['about']}")
    return "\n".join(lines)


def _base_models_to_warm(jobs: list[Job]) -> dict[str, list[str]]:
    """{cache key: overrides of one job using it} for the built-in base models not yet cached."""
    from drpo.config import load_config
    from drpo.models.gguf import is_pretrained_name
    from drpo.policy import base_model_key, cache_dir

    warm = {}
    for job in jobs:
        config = load_config(None, job.overrides)
        if is_pretrained_name(config.model.name):  # pretrained models have no warm-up
            continue
        key = base_model_key(config)
        if key not in warm and not (cache_dir() / "base" / f"{key}.pt").exists():
            warm[key] = job.overrides
    return warm


# ----------------------------------------------------------------------------- worker processes
def _run_processes(tasks: list[tuple], workers: int, console) -> dict[str, int]:
    """Run (name, target, args, run_dir, steps) tasks in spawned processes, ``workers`` at a time, with a live
    display that follows each run's metrics.jsonl. Returns {name: exit code}. Ctrl-C: SIGTERM to the running
    workers (the trainer checkpoints on it), wait for them, then KeyboardInterrupt."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    context = multiprocessing.get_context("spawn")
    pending = list(tasks)
    running: dict = {}  # process -> (name, run_dir, steps, progress task id)
    codes: dict[str, int] = {}
    columns = (TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        overall = progress.add_task("[bold]runs", total=len(tasks), status="")
        try:
            while pending or running:
                while pending and len(running) < workers:
                    name, target, args, path, steps = pending.pop(0)
                    process = context.Process(target=target, args=args, name=name, daemon=False)
                    with _one_thread_env():  # the child reads these when it imports torch
                        process.start()
                    running[process] = (name, path, steps, progress.add_task(name, total=steps, status=""))
                multiprocessing.connection.wait([p.sentinel for p in running], timeout=1.0)
                for process, (name, path, _, task) in list(running.items()):
                    if path is not None:
                        step, status = _last_step(path)
                        progress.update(task, completed=step, status=status)
                    if process.exitcode is None:
                        continue
                    process.join()
                    codes[name] = process.exitcode
                    del running[process]
                    progress.remove_task(task)
                    progress.advance(overall)
                    progress.console.print(_finished_line(name, path, process.exitcode))
        except KeyboardInterrupt:
            for process in running:
                process.terminate()  # SIGTERM: the trainer checkpoints and writes summary.json (interrupted)
            for process in running:
                process.join(timeout=300)
            raise
    return codes


class _one_thread_env:
    def __enter__(self):
        self.saved = {key: os.environ.get(key) for key in THREAD_ENV}
        os.environ.update({key: "1" for key in THREAD_ENV})

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _last_step(path: Path) -> tuple[int, str]:
    """(last logged step, a short status) from the tail of a run's metrics.jsonl."""
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        return 0, "starting"
    with metrics.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        parts = [f"{key.split('/')[0]} {record[key]:.3f}" for key in ("reward/mean", "eval/accuracy")
                 if isinstance(record.get(key), (int, float))]
        return int(record["step"]), "  ".join(parts)
    return 0, "starting"


def _finished_line(name: str, path: Path | None, code: int) -> str:
    if path is None:
        return f"{'done' if code == 0 else f'[red]failed (exit {code})[/]'} {name}"
    summary_path = path / "summary.json"
    if code not in (0, EXIT_NON_FINITE) or not summary_path.is_file():
        return f"[red]failed[/] {name} (exit {code})"
    summary = json.loads(summary_path.read_text())
    if summary.get("stopped"):
        return f"[red]stopped[/] {name}: {summary['stopped'][:80]}"
    if summary.get("interrupted"):
        return f"[yellow]interrupted[/] {name} at step {summary['steps']}"
    return (f"done {name}: eval accuracy {summary['eval/accuracy_start']:.3f} -> {summary['eval/accuracy_final']:.3f} "
            f"(best {summary['eval/accuracy_best']:.3f}), {summary['wall_time_s']:.0f}s")


def _child_setup(log_path: Path | None) -> None:
    """In a worker: one torch thread, Ctrl-C left to the parent (it sends SIGTERM), output to a log file."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")  # noqa: SIM115 - lives as long as the process
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    import torch

    torch.set_num_threads(1)


def _warm_up_worker(overrides: list[str]) -> None:
    """Build one base model (supervised warm-up) into the cache: a Trainer construction, so that seeding and
    model initialisation are exactly those of the runs that will load it."""
    _child_setup(None)
    from rich.console import Console

    from drpo.config import load_config
    from drpo.trainer import Trainer

    Trainer(load_config(None, overrides), console=Console(quiet=True))


def _run_worker(overrides: list[str], path: str, resume: bool) -> None:
    """One run: Trainer(config).train(), resumed from RUN_DIR's checkpoint when ``resume``."""
    import traceback

    path_ = Path(path)
    _child_setup(path_ / "worker.log")
    from rich.console import Console

    from drpo.config import load_config
    from drpo.trainer import NonFiniteError, Trainer

    config = load_config(None, [*overrides, f"out={path}", *([f"resume={path}"] if resume else [])])
    quiet = Console(quiet=True)
    try:
        Trainer(config, console=quiet).train(console=quiet)
    except NonFiniteError as error:
        _write_stopped_summary(path_, config, str(error))
        sys.exit(EXIT_NON_FINITE)
    except BaseException:
        (path_ / "error.txt").write_text(traceback.format_exc())
        raise


def _write_stopped_summary(path: Path, config, reason: str) -> None:
    """summary.json of a run the trainer stopped on non-finite losses: finished (a rerun would repeat it)."""
    from drpo.metrics import read_metrics

    records = read_metrics(path) if (path / "metrics.jsonl").is_file() else []
    evals = [r["eval/accuracy"] for r in records if isinstance(r.get("eval/accuracy"), (int, float))]
    summary = {"loss": config.loss.name, "steps": max((r["step"] for r in records), default=0),
               "steps_planned": config.steps, "interrupted": False, "stopped": f"non-finite loss: {reason}",
               "eval/accuracy_start": evals[0] if evals else None, "eval/accuracy_final": evals[-1] if evals else None,
               "eval/accuracy_best": max(evals, default=None)}
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
