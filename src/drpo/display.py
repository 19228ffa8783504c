"""What a run shows while it trains, and how it is asked to stop.

    with StopRequests() as stop, progress_display(console, total=100, completed=0) as show:
        while not stop.requested:
            ...; show(step, metrics, best_accuracy)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StopRequests:
    """Ctrl-C or SIGTERM sets ``requested``: the run ends after the current step, so its checkpoint is of a whole
    step. A second Ctrl-C stops at once (without a new checkpoint: the last periodic one stays valid). Outside the
    main thread, which alone may set handlers, nothing is installed."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict = {}

    def _request(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


PLAIN_EVERY_S = 30.0  # off a terminal, a progress line at least this often (and at every evaluation or check)


@contextmanager
def step_progress(console, total: int, completed: int, description: str,
                  transient: bool = False) -> Iterator[Callable[..., None]]:
    """Progress of ``total`` steps; yields ``update(done, status="", milestone=False)``.

    On a terminal: a rich progress bar with ``status`` beside it. Elsewhere (a log file, CI) a bar's redraws come
    out garbled, so each ``milestone`` (an evaluation, an accuracy check) and at least every PLAIN_EVERY_S seconds
    prints one plain line: ``description step/total  elapsed  status``.
    """
    console = console if console is not None else get_console()
    if not console.is_terminal:
        started = last = time.monotonic()

        def plain(done: int, status: str = "", milestone: bool = False) -> None:
            nonlocal last
            now = time.monotonic()
            if milestone or done == total or now - last >= PLAIN_EVERY_S:
                last = now
                console.print(f"{description} {done}/{total}  {now - started:.0f}s  {status}".rstrip(),
                              highlight=False, soft_wrap=True)

        yield plain
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=transient)
    with progress:
        task = progress.add_task(description, total=total, completed=completed, status="")
        yield lambda done, status="", milestone=False: progress.update(task, completed=done, status=status)


@contextmanager
def progress_display(console, total: int, completed: int) -> Iterator[Callable[[int, dict, float | None], None]]:
    """The RL steps' progress (:func:`step_progress`); yields ``show(step, metrics, best_accuracy)``."""
    with step_progress(console, total, completed, "RL") as update:
        yield lambda step, metrics, best: update(step, status_line(metrics, best), "eval/accuracy" in metrics)


def status_line(metrics: dict, best: float | None) -> str:
    parts = [f"reward {metrics['reward/mean']:.3f}"]
    if "eval/accuracy" in metrics:
        parts.append(f"eval {metrics['eval/accuracy']:.3f}")
    if best is not None:
        parts.append(f"best {best:.3f}")
    if "mismatch/abs_mean" in metrics:
        parts.append(f"|pi-mu| {metrics['mismatch/abs_mean']:.2e}")
    parts.append(f"{metrics['throughput/tokens_per_s']:.0f} tok/s")
    return "  ".join(parts)
