"""Early stopping on a monitored metric, keeping the best epoch's weights."""

from __future__ import annotations

import math
from typing import Any

import torch

from babysit.train.loop import Callback, Trainer


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved for ``patience`` epochs, and at the
    end of the run puts back the weights of the best epoch.

    It also keeps the best weights in memory for :class:`Checkpointer`'s ``best.pt``.
    With ``patience=None`` it only tracks the best epoch (no stop, no restore).
    """

    def __init__(self, monitor: str = "val_loss", patience: int | None = 10, min_delta: float = 0.0):
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.mode = "max" if monitor.endswith("acc") else "min"
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _value(self, logs: dict[str, float]) -> float | None:
        if self.monitor in logs:
            return logs[self.monitor]
        # no validation split: fall back to the training counterpart
        fallback = self.monitor.replace("val_", "train_")
        return logs.get(fallback)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        value = self._value(logs)
        if value is None or not math.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, trainer.state.epoch, 0
            state = trainer.model.state_dict()
            if self.best_weights is not None and self.best_weights.keys() == state.keys():
                for key, tensor in state.items():  # reuse the buffers: no allocation per epoch
                    self.best_weights[key].copy_(tensor)
            else:
                self.best_weights = {k: v.detach().clone() for k, v in state.items()}
        else:
            self.bad_epochs += 1
            if self.patience is not None and self.bad_epochs >= self.patience:
                trainer.state.stop = True
                trainer.state.stop_reason = (f"early stopping at epoch {trainer.state.epoch}: {self.monitor} has not "
                                             f"improved for {self.patience} epochs (best {self.best:.4g} at epoch {self.best_epoch})")

    def on_fit_end(self, trainer: Trainer) -> None:
        # a diverged run always gets its best weights back: the last ones are NaN or worse
        if (self.patience is not None or trainer.state.diverged) and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any], best_weights: dict[str, torch.Tensor] | None) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_weights = None if best_weights is None else {k: v.clone() for k, v in best_weights.items()}


__all__ = ["EarlyStopping"]
