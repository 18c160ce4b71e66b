"""A rich progress bar over a known number of steps, for the finders.

Like the training loop's ``ProgressReporter``: rich is imported only when a bar is shown,
and the bar redraws at most ``refresh_hz`` times a second, so a step costs a clock read.
The bar is transient: it is gone when the result lines are printed. On a stream that is
not a terminal (a log file, a pipe) nothing is drawn: the finders take seconds, and their
result lines say everything.

Example
-------
>>> import io
>>> with StepProgress("demo", total=3, stream=io.StringIO()) as bar:
...     for i in range(3):
...         bar.update(i + 1, f"step {i}")
...     bar.finish(3)
"""

from __future__ import annotations

import sys
import time
from typing import Any


class StepProgress:
    """``with StepProgress(label, total) as bar: bar.update(done, text)``; ``bar.finish(done)``
    when the work ended before ``total`` (the bar then shows where it stopped)."""

    def __init__(self, label: str, total: int, *, stream: Any = None, refresh_hz: float = 8.0,
                 force_terminal: bool | None = None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = force_terminal if force_terminal is not None else bool(isatty and isatty())
        self.min_interval = 1.0 / refresh_hz
        self._last = 0.0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> StepProgress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[text]}"),
            console=Console(file=self.stream, force_terminal=True),
            auto_refresh=False,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=self.total, text="")
        self._last = time.monotonic()
        return self

    def update(self, done: int, text: str = "") -> None:
        """Advance to ``done`` steps; redraws only when the last redraw is old enough."""
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last < self.min_interval and done < self.total:
            return
        self._last = now
        self._progress.update(self._task, completed=done, text=text)
        self._progress.refresh()

    def finish(self, done: int) -> None:
        """The work ended after ``done`` steps (fewer than ``total`` when it stopped early)."""
        if self._progress is None:
            return
        self._progress.update(self._task, completed=done, total=max(done, 1))
        self._progress.refresh()

    def __exit__(self, *exc: Any) -> None:
        if self._progress is None:
            return
        self._progress.stop()
        self._progress = None
