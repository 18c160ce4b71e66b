"""The progress display: a live rich bar on a terminal; off a terminal (a pipe, a log file),
one plain line per epoch.

A log wants lines it can grep and diff, not a bar redrawn in place, nor raw batch losses
every few seconds: each epoch's line carries its epoch, training and validation figures,
learning rate and time, and nothing prints between epochs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from babysit.train.loop import Callback, Trainer

# the figures an epoch line shows, in this order, when the epoch logged them (the GAN's
# step logs d_loss and g_loss instead of train_loss)
_SHOWN = ("train_loss", "train_acc", "d_loss", "g_loss", "val_loss", "val_acc")


def _describe(logs: dict[str, float]) -> str:
    parts = []
    for key in _SHOWN:
        if key in logs and logs[key] is not None:
            value = logs[key]
            parts.append(f"{key} {value:.2%}" if key.endswith("acc") else f"{key} {value:.4f}")
    if "mistakes" in logs:  # a perceptron's updates this epoch
        parts.append(f"mistakes {logs['mistakes']}")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    return "  ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def epoch_line(epoch: int, epochs: int, logs: dict[str, float], epoch_seconds: float | None) -> str:
    """The plain line for one epoch: its number, figures, learning rate and time.

    >>> epoch_line(3, 20, {"train_loss": 0.5, "val_loss": 0.6, "val_acc": 0.8, "lr": 0.1, "time": 4.2}, 1.4)
    'epoch 3/20  train_loss 0.5000  val_loss 0.6000  val_acc 80.00%  lr 0.1  1.40 s (total 4.20 s)'
    """
    line = f"epoch {epoch}/{epochs}  {_describe(logs)}"
    if epoch_seconds is not None:
        line += f"  {_seconds(epoch_seconds)}"
        if "time" in logs:
            line += f" (total {_seconds(logs['time'])})"
    return line


class ProgressReporter(Callback):
    """A rich progress bar on a terminal; one plain line per epoch otherwise.

    The bar advances per batch but redraws at most ``refresh_hz`` times a second: the only
    per-batch cost is a clock read. Off a terminal the batch hook does nothing at all.
    """

    def __init__(self, total_epochs: int, steps_per_epoch: int, *, refresh_hz: float = 8.0, stream: Any = None,
                 force_plain: bool | None = None):
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.min_interval = 1.0 / refresh_hz
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.plain = force_plain if force_plain is not None else not (isatty and isatty())
        if self.plain:  # no per-batch hook: the loop skips callbacks that do not override it
            self.on_batch_end = Callback.on_batch_end.__get__(self)  # type: ignore[method-assign]
        self._progress = None
        self._task = None
        self._last = 0.0
        self._previous_time = 0.0  # the loop's clock (logs["time"]) at the end of the last epoch
        self._last_epoch_logs: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self._last = time.monotonic()
        self._previous_time = trainer.state.elapsed  # a resumed run's clock goes on
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
        self._last = now
        assert self._progress is not None
        metrics = _describe(self._last_epoch_logs) or f"batch_loss {loss.item():.4f}"
        self._progress.update(self._task, completed=trainer.state.step, epoch=trainer.state.epoch + 1, metrics=metrics)
        self._progress.refresh()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._last_epoch_logs = logs
        now = time.monotonic()
        if self.plain:
            took = logs["time"] - self._previous_time if "time" in logs else None
            self._previous_time = logs.get("time", self._previous_time)
            print(epoch_line(trainer.state.epoch, self.total_epochs, logs, took), file=self.stream, flush=True)
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


__all__ = ["ProgressReporter", "epoch_line"]
