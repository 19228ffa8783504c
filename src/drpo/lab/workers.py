"""`drpo compare`, stage 3: runs and base-model warm-ups in spawned worker processes, ``workers`` at a
time, sharing the cores (``cpu_count // workers`` torch threads each, or ``threads`` when given), with a live
display that follows each run's metrics.jsonl.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import sys
from pathlib import Path

EXIT_NON_FINITE = 3  # the worker's exit code when the trainer stopped on non-finite losses
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def run_processes(tasks: list[tuple], workers: int, console, threads: int | None = None) -> dict[str, int]:
    """Run (name, target, args, run_dir, steps) tasks in spawned processes, ``workers`` at a time, with a live
    display that follows each run's metrics.jsonl. Returns {name: exit code}. Each worker runs ``threads``
    torch/OpenMP threads (default: the cores shared out, ``cpu_count // workers``). Ctrl-C: SIGTERM to the
    running workers (the trainer checkpoints on it), wait for them, then KeyboardInterrupt."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    context = multiprocessing.get_context("spawn")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)  # 2 small runs x 1 thread, or 1 large x 2
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
                    with _thread_env(threads):  # the child reads these when it imports torch
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


class _thread_env:
    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self):
        self.saved = {key: os.environ.get(key) for key in THREAD_ENV}
        os.environ.update({key: str(self.threads) for key in THREAD_ENV})

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
    """In a worker: the parent's share of threads, Ctrl-C left to the parent (it sends SIGTERM), output to a log."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")  # noqa: SIM115 - lives as long as the process
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def warm_up_worker(overrides: list[str]) -> None:
    """Build one base model (supervised warm-up) into the cache with the build_policy every run calls; the
    built-in model seeds its own initialisation and warm-up, so the runs that load it start from these weights."""
    _child_setup(None)
    from rich.console import Console

    from drpo.backends import build_policy
    from drpo.config import load_config

    build_policy(load_config(None, overrides), console=Console(quiet=True))


def run_worker(overrides: list[str], path: str, resume: bool) -> None:
    """One run: Trainer(config).train(), resumed from RUN_DIR's checkpoint when ``resume``. A run the trainer
    stopped on non-finite losses has its summary.json (finished, a rerun would repeat it) and exits
    EXIT_NON_FINITE."""
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
    except NonFiniteError:
        sys.exit(EXIT_NON_FINITE)
    except BaseException:
        (path_ / "error.txt").write_text(traceback.format_exc())
        raise
