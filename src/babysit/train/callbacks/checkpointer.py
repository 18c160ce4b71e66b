"""``checkpoints/last.pt`` and ``best.pt``, written atomically and time-gated."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from babysit.train.callbacks.early_stopping import EarlyStopping
from babysit.train.checkpoint import rng_state, save_checkpoint
from babysit.train.loop import Callback, Trainer


class Checkpointer(Callback):
    """Writes ``checkpoints/last.pt`` (everything needed to resume) and ``best.pt`` (the best
    weights so far), atomically, at most every ``every_s`` seconds and after the last epoch.

    Time-gating keeps the cost of fsync off short epochs; a run killed between saves resumes
    from the last one and loses at most ``every_s`` seconds of work.
    """

    def __init__(self, folder: str | Path, *, generator: torch.Generator, epochs: int, every_s: float = 10.0,
                 early_stopping: EarlyStopping | None = None, extra: Callable[[], dict[str, Any]] | None = None,
                 before_save: list[Callable[[], None]] | None = None):
        self.folder = Path(folder)
        self.epochs = epochs
        self.before_save = before_save or []
        self._saved_best_epoch: int | None = None
        self.generator = generator
        self.every_s = every_s
        self.early_stopping = early_stopping
        self.extra = extra
        self._last_save = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.state.step == 0:  # a step-0 checkpoint: a run killed before its first epoch ends can resume
            self.save(trainer)
        self._last_save = time.monotonic()

    def save(self, trainer: Trainer) -> None:
        state = trainer.state
        checkpoint = {
            "format": "babysit-checkpoint-1",
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "schedule": trainer.schedule.state_dict() if trainer.schedule is not None else None,
            "loop": {"epoch": state.epoch, "step": state.step, "stop": state.stop,
                     "stop_reason": state.stop_reason, "elapsed": state.elapsed,
                     "logs": {k: float(v) for k, v in state.logs.items()}},
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
        }
        if trainer.scaler is not None:
            checkpoint["scaler"] = trainer.scaler.state_dict()
        if self.extra is not None:
            checkpoint.update(self.extra())
        for hook in self.before_save:
            hook()
        es = self.early_stopping
        if es is not None and es.best_weights is not None and es.best_epoch != self._saved_best_epoch:
            save_checkpoint(self.folder / "best.pt", {"model": es.best_weights, "epoch": es.best_epoch,
                                                      "monitor": es.monitor, "value": es.best})
            self._saved_best_epoch = es.best_epoch
        save_checkpoint(self.folder / "last.pt", checkpoint)
        self._last_save = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # the final save happens here, before EarlyStopping.on_fit_end puts the best weights
        # back, so last.pt always holds the last weights
        final = trainer.state.stop or trainer.state.epoch >= self.epochs
        if trainer.state.diverged:
            return  # the weights are bad: keep the last good checkpoint as it is
        if final or time.monotonic() - self._last_save >= self.every_s:
            self.save(trainer)


__all__ = ["Checkpointer"]
