"""``metrics.jsonl``: the epoch records (and, with ``train.log_every``, batch losses).

Lines follow :mod:`babysit.rundir`'s JSON policy (NaN / inf as null).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from babysit.rundir import json_line, truncate_jsonl
from babysit.train.loop import Callback, Trainer


class MetricsLogger(Callback):
    """Appends one JSON object per logged point to ``metrics.jsonl``.

    Every epoch end is logged (step, epoch, lr, train_loss, train_acc, val_loss, val_acc,
    time); with ``log_every`` the training loss of every N-th batch is logged too (one
    ``.item()`` sync at those steps only). The trainer's loss-spike and rollback records
    (:attr:`Trainer.events`: ``{"event": "loss_spike" | "rollback", "step": ...}``, no ``epoch``
    or ``lr`` key, so the readers of epoch records pass them by) are written as they come,
    before the epoch's record.
    """

    def __init__(self, path: str | Path, log_every: int | None = None, flush_every_s: float = 2.0):
        self.path = Path(path)
        self.log_every = log_every
        self.flush_every_s = flush_every_s
        self._handle = None
        self._last_flush = 0.0
        self._events = 0  # trainer.events written so far
        if log_every is None:  # no per-batch work at all
            self.on_batch_end = Callback.on_batch_end.__get__(self)  # type: ignore[method-assign]

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self._events = len(trainer.events)

    def _write_events(self, trainer: Trainer) -> None:
        events = trainer.events
        for record in events[self._events:]:
            self._write(record)
        self._events = len(events)

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json_line(record) + "\n")

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.log_every and trainer.state.step % self.log_every == 0:
            self._write_events(trainer)
            self._write({
                "step": trainer.state.step,
                "epoch": trainer.state.epoch,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "batch_loss": loss.item(),
            })

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._write_events(trainer)
        self._write(dict(logs))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Hand buffered lines to the OS (the checkpointer calls this before each save, so a
        killed run never has a checkpoint newer than its metrics)."""
        if self._handle is not None:
            self._handle.flush()
        self._last_flush = time.monotonic()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._handle is not None:
            self._write_events(trainer)
            self._handle.close()
            self._handle = None


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop logged points after ``last_step`` (used when resuming from a checkpoint); see
    :func:`babysit.rundir.truncate_jsonl`."""
    truncate_jsonl(path, last_step)


__all__ = ["MetricsLogger", "truncate_metrics"]
