"""The live monitors and the explosion guard in the loop: ``monitors.jsonl``.

:func:`monitor_line` (a record as one JSON line) lives with the monitors
(:mod:`babysit.checks.monitors`) and is re-exported here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from babysit.checks.monitors import Monitor, monitor_line
from babysit.config import EXPLOSION_FACTOR
from babysit.train.loop import Callback, Trainer


class MonitorCallback(Callback):
    """The live monitors and the explosion guard in the loop (see :mod:`babysit.checks.monitors`).

    Samples every ``every`` steps into ``monitors.jsonl``; when the guard trips
    (``loss_exploded`` / ``nonfinite_loss``) the run stops at once, the loop is marked
    ``diverged`` so that no checkpoint is written from the bad weights, and the finding is
    kept in :attr:`guard`. A :class:`TensorBoardLogger` given this callback (``monitors=``)
    gets the records as they are written (:attr:`tensorboard`).
    """

    def __init__(self, path: str | Path, *, every: int = 10, explosion_factor: float = EXPLOSION_FACTOR,
                 initial_loss: float | None = None, flush_every_s: float = 2.0):
        self.path = Path(path)
        self.every = every
        self.explosion_factor = explosion_factor
        self.initial_loss = initial_loss
        self.flush_every_s = flush_every_s
        self.monitor: Any = None
        self._handle = None
        self._unwritten: list[dict[str, Any]] = []
        self._last_flush = 0.0
        self.tensorboard: Any = None  # the TensorBoardLogger that writes the samples (it sets itself here)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self._last_flush = time.monotonic()
        self.monitor = Monitor(trainer.model, trainer.optimizer, every=self.every,
                               explosion_factor=self.explosion_factor, sink=self._write,
                               start_step=trainer.state.step, initial_loss=self.initial_loss,
                               # no module hooks under compile; DDP (torchrun) calls the module itself
                               activations=trainer.forward is trainer.model
                               or (isinstance(trainer.forward, torch.nn.parallel.DistributedDataParallel)
                                   and trainer.forward.module is trainer.model))

    def _write(self, record: dict[str, Any]) -> None:
        # encoded in bulk at the next flush: one sample's worth of JSON costs several times
        # more on its own, in the middle of training, than in a loop over many
        self._unwritten.append(record)

    def _stop(self, trainer: Trainer, finding: Any) -> None:
        trainer.state.stop = True
        trainer.state.diverged = True
        trainer.state.stop_reason = f"{finding.id}: {finding.message}"

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.monitor.observe_loss(loss) is not None:
            if trainer.spike_handled:
                # train.on_spike skip / rollback undid this loss (a spike, or a step after one in a
                # rolled-back window): no reason to stop; the guard stays armed for what follows
                self.monitor.guard = None
            else:
                self._stop(trainer, self.monitor.guard)

    def on_rollback(self, trainer: Trainer, record: dict[str, Any]) -> None:
        # the weights the monitor copied before its next sampled step (to measure that step's
        # update) were rolled back: copy them again
        if self.monitor is not None:
            self.monitor.rearm()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # between samples: the epoch's mean loss is already on the host
        if not trainer.state.diverged and "train_loss" in logs:
            finding = self.monitor.check_loss(logs["train_loss"], trainer.state.step)
            if finding is not None:
                self._stop(trainer, finding)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples (the checkpointer calls this before each save)."""
        if self.monitor is not None:
            self.monitor.flush()
        if self._handle is not None:
            self._handle.write("".join(monitor_line(record) for record in self._unwritten))
            self._handle.flush()
        if self.tensorboard is not None and self._unwritten:
            self.tensorboard.add_monitor_records(self._unwritten)
        self._unwritten.clear()
        self._last_flush = time.monotonic()

    @property
    def guard(self) -> Any:
        return None if self.monitor is None else self.monitor.guard

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.monitor is not None:
            self.monitor.detach()
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


__all__ = ["MonitorCallback", "monitor_line"]
