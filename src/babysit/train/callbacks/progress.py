"""The progress display: a rich bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from babysit.train.loop import Callback, Trainer


def _describe(logs: dict[str, float]) -> str:
    parts = []
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if key in logs and logs[key] is not None:
            value = logs[key]
            parts.append(f"{key} {value:.2%}" if key.endswith("acc") else f"{key} {value:.4f}")
    if "mistakes" in logs:  # a perceptron's updates this epoch
        parts.append(f"mistakes {logs['mistakes']}")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    return "  ".join(parts)


class ProgressReporter(Callback):
    """A rich progress bar on a terminal; a plain line every ``every_s`` seconds otherwise.

    The bar advances per batch but redraws at most ``refresh_hz`` times a second: the only
    per-batch cost is a clock read.
    """

    def __init__(self, total_epochs: int, steps_per_epoch: int, *, every_s: float = 5.0,
                 refresh_hz: float = 8.0, stream: Any = None, force_plain: bool | None = None):
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.every_s = every_s
        self.min_interval = 1.0 / refresh_hz
        self.stream = stream or sys.stdout
        self.plain = force_plain if force_plain is not None else not self.stream.isatty()
        self._progress = None
        self._task = None
        self._last = 0.0
        self._last_epoch_logs: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self._last = time.monotonic()
        if self.plain:
            if trainer.state.epoch:
                print(f"resuming at epoch {trainer.state.epoch}/{self.total_epochs}", file=self.stream, flush=True)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=Console(file=self.stream),
            auto_refresh=False,
            transient=False,
        )
        self._progress.start()
        total = self.total_epochs * self.steps_per_epoch
        self._task = self._progress.add_task(
            "train", total=total, completed=trainer.state.step if trainer.state.epoch else 0,
            epoch=trainer.state.epoch, epochs=self.total_epochs, metrics="")

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return
        self._last_batch_update(trainer, loss, now)

    def _last_batch_update(self, trainer: Trainer, loss: torch.Tensor, now: float) -> None:
        if self.plain:
            if now - self._last >= self.every_s:
                self._last = now
                print(f"epoch {trainer.state.epoch + 1}/{self.total_epochs}  step {trainer.state.step}  "
                      f"batch_loss {loss.item():.4f}", file=self.stream, flush=True)
            return
        self._last = now
        assert self._progress is not None
        metrics = _describe(self._last_epoch_logs) or f"batch_loss {loss.item():.4f}"
        self._progress.update(self._task, completed=trainer.state.step, epoch=trainer.state.epoch + 1, metrics=metrics)
        self._progress.refresh()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._last_epoch_logs = logs
        now = time.monotonic()
        if self.plain:
            last_epoch = trainer.state.epoch >= self.total_epochs or trainer.state.stop
            if now - self._last >= self.every_s or last_epoch or trainer.state.epoch == 1:
                self._last = now
                print(f"epoch {trainer.state.epoch}/{self.total_epochs}  {_describe(logs)}", file=self.stream, flush=True)
            return
        assert self._progress is not None
        self._progress.update(self._task, completed=trainer.state.step, epoch=trainer.state.epoch, metrics=_describe(logs))
        if now - self._last >= self.min_interval:
            self._last = now
            self._progress.refresh()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            if trainer.state.stop:  # stopped early: show the bar where it stopped
                self._progress.update(self._task, total=trainer.state.step)
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
        if trainer.state.stop_reason:
            print(trainer.state.stop_reason, file=self.stream, flush=True)


__all__ = ["ProgressReporter"]
