"""`drpo compare`: the off-policy stress test, a grid of methods x seeds x conditions.

    drpo compare                                             # every method and condition, 3 seeds
    drpo compare --methods drpo dppo_binary_tv cispo --conditions fp8 stale --seeds 2 steps=60
    drpo compare --methods drpo drpo:delta=0.3 spo --out runs/delta --workers 2
    drpo compare --workers 1 --threads 1 ...                 # one core for the sweep, the other for other work
    drpo report runs/compare                                 # rebuild report.md from the runs

How a sweep runs, top to bottom:

1. plan: one job per (condition, method, seed); its trainer overrides are the condition's, then the
   sweep's evaluation size (conditions.SWEEP_OVERRIDES), then the command line's, then the method's
   ``loss=...`` (and the ``adaptive_delta.*`` settings it carries, if any), then ``seed=K``. Every method
   of a (condition, seed) therefore starts from the same base model and sees the same prompts and sampling seeds.
2. reuse: a run directory whose summary.json says it finished is kept; one with a checkpoint is resumed
   (``resume=RUN_DIR``, exactly as `drpo train` resumes); a finished run asked for more steps is
   extended from its last checkpoint. A run directory made with a different config is an error, not
   silently reused.
3. warm up each distinct base model once (cached by config hash in $DRPO_CACHE), then the runs, each in
   its own spawned process (cpu_count // workers torch threads each, or ``--threads``), ``workers`` at a
   time. Ctrl-C stops the workers politely (they checkpoint); the same command continues where it stopped.
4. pack: the finished runs' config.yaml, metrics.jsonl and summary.json go into SWEEP_DIR/runs.tar.xz
   (drpo.lab.archive; also when interrupted). The run directories stay.
5. report: drpo.lab.report reads the run files and writes report.md, figures/, results.json.

Layout: SWEEP_DIR/sweep.yaml (the grid), SWEEP_DIR/runs/{condition}/{method}/seed{k}/ (normal run
directories, plus worker.log), SWEEP_DIR/runs.tar.xz, SWEEP_DIR/report.md, SWEEP_DIR/figures/,
SWEEP_DIR/results.json. A finished run needs only its three files to be reused and reported, and they are
read from its directory or, where that is absent, from the archive: the published sweeps keep only the
archive in git (.gitignore drops docs/results/*/runs/), so a sweep longer than one working session
continues from another checkout with the same command (its finished runs reused, the rest started over).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from drpo.lab.archive import pack
from drpo.lab.conditions import CONDITIONS, SWEEP_OVERRIDES, get_conditions
from drpo.lab.jobs import base_models_to_warm, plan, reset_run_dir, write_grid
from drpo.lab.methods import METHODS, parse_methods
from drpo.lab.report import write_report
from drpo.lab.workers import EXIT_NON_FINITE, run_processes, run_worker, warm_up_worker
from drpo.losses import cannot_bind


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


# ----------------------------------------------------------------------------- the sweep
def run_sweep(out: str | Path = "runs/compare", methods: list[str] | None = None, seeds: int = 3,
              conditions: list[str] | None = None, overrides: list[str] = (), workers: int = 2,
              target: float | None = None, console=None, threads: int | None = None) -> Outcome:
    """Plan, warm up the base models, run what is not finished, write the report.

    ``threads``: torch/OpenMP threads of each worker (default cpu_count // workers); with ``workers=1,
    threads=1`` a long sweep leaves the other cores to other work."""
    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(out)
    methods_ = parse_methods(methods)
    conditions_ = get_conditions(conditions)
    if seeds < 1 or workers < 1 or (threads is not None and threads < 1):
        raise ValueError("--seeds, --workers and --threads must be at least 1")
    seed_list = list(range(seeds))
    overrides = [*SWEEP_OVERRIDES, *overrides]  # stored in sweep.yaml and shown in the report with the user's
    for method in methods_:
        if (message := cannot_bind(method.build())) is not None:
            console.print(f"[yellow]warning[/] ({method.label}): {message}", highlight=False)
    jobs = plan(out, methods_, seed_list, conditions_, list(overrides))
    write_grid(out, methods_, seed_list, conditions_, list(overrides), target)

    outcome = Outcome(reused=[j.name for j in jobs if j.action == "done"])
    todo = [j for j in jobs if j.action != "done"]
    warm = base_models_to_warm(todo)
    console.print(f"[bold]drpo compare[/]: {_count(len(methods_), 'method')} x {_count(len(seed_list), 'seed')} x "
                  f"{_count(len(conditions_), 'condition')} = {len(jobs)} runs -> {out}: "
                  f"{len(outcome.reused)} finished (reused), "
                  f"{sum(j.action in ('resume', 'extend') for j in todo)} to resume, "
                  f"{sum(j.action == 'new' for j in todo)} to start; {len(warm)} base model(s) to warm up; "
                  f"{workers} worker(s)" + (f" x {threads} thread(s)" if threads else ""))
    try:
        if warm:
            tasks = [(f"warm-up {name}", warm_up_worker, (args,), None, None) for name, args in warm.items()]
            codes = run_processes(tasks, workers, console, threads)
            outcome.failed = [name for name, code in codes.items() if code != 0]
            if outcome.failed:
                console.print(f"[red]base-model warm-up failed[/] ({', '.join(outcome.failed)}): try one run with "
                              f"`drpo train` and the same overrides to see the error")
                return outcome
        for job in todo:
            if job.action == "new":
                reset_run_dir(job.path)
                outcome.started.append(job.name)
            else:
                outcome.resumed.append(job.name)
        tasks = [(job.name, run_worker, (job.overrides, str(job.path), job.action != "new"), job.path, job.steps)
                 for job in todo]
        codes = run_processes(tasks, workers, console, threads)
    except KeyboardInterrupt:
        outcome.interrupted = True
        pack(out)
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
    pack(out)
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
    lines = ["methods (default: all; any registry name or preset, or NAME:key=value,... also works; a key "
             "adaptive_delta.KEY sets the trainer's adaptive boundary for that method):"]
    for label, (loss, hyper) in METHODS.items():
        lines.append(f"  {label:<18} " + " ".join([f"loss={loss}", *(f"{k}={v}" for k, v in hyper.items())]))
    lines.append("conditions (default: all but those marked opt-in):")
    for name, spec in CONDITIONS.items():
        about = f"[opt-in] {spec['about']}" if spec.get("opt_in") else spec["about"]
        lines.append(f"  {name:<18} {' '.join(spec['overrides']) or '(no overrides)':<40} {about}")
    return "\n".join(lines)
