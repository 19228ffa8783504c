"""What a run shows while it trains, and how it is asked to stop.

    with StopRequests() as stop, progress_display(console, total=100, completed=0) as show:
        while not stop.requested:
            ...; show(step, metrics, best_accuracy)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def progress_display(console, total: int, completed: int) -> Iterator[Callable[[int, dict, float | None], None]]:
    """A progress bar of RL steps; yields ``show(step, metrics, best_accuracy)``. On a console that is not a
    terminal (a log file) each evaluated step also gets a line of its own."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=False)
    with progress:
        task = progress.add_task("RL", total=total, completed=completed, status="")

        def show(step: int, metrics: dict, best: float | None) -> None:
            progress.update(task, completed=step, status=status_line(metrics, best))
            if console is not None and not console.is_terminal and "eval/accuracy" in metrics:
                console.print(f"step {step}/{total}  {status_line(metrics, best)}")

        yield show


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
