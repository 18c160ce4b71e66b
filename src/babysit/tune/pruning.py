"""Stopping hopeless and diverging trials of ``babysit search`` early.

:class:`DivergencePruner` prunes a trial whose validation loss is not finite or above
:data:`babysit.config.EXPLOSION_FACTOR` (CS231n's 3x) times its value at initialization,
the explosion rule of :mod:`babysit.checks.monitors`, before it asks the pruner it wraps
(Optuna's :class:`~optuna.pruners.MedianPruner` on the validation loss,
:func:`make_pruner`): a trial that diverges during the median rule's warm-up is pruned
with its reason, not failed on a NaN. :class:`TrialReporter` is the training callback that
reports each epoch to the trial and stops the run when the pruner says so.

Example
-------
>>> divergence_reason(float("nan"), initial=2.3)
'validation loss is nan: the trial diverged'
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.pruners import BasePruner, MedianPruner
from optuna.trial import FrozenTrial

from babysit.config import EXPLOSION_FACTOR
from babysit.data import Split
from babysit.rundir import jsonable
from babysit.train.loop import Callback, Trainer, evaluate

DIVERGENCE_FACTOR = EXPLOSION_FACTOR  # CS231n: a loss above ~3x its initial value has exploded (checks.monitors too)
MEDIAN_STARTUP_TRIALS = 5  # the median rule starts once this many trials have finished
MEDIAN_WARMUP_FRACTION = 0.1  # ... and judges a trial only after 10% of its epochs (slow starters are not losers)


def divergence_reason(value: float, initial: float | None, factor: float = DIVERGENCE_FACTOR,
                      where: str = "") -> str | None:
    """Why a validation loss ``value`` means the trial diverged, or None when it did not: the
    loss is not finite, or above ``factor`` times ``initial``, its value at initialization.

    Example
    -------
    >>> divergence_reason(7.5, initial=2.3, where=" at epoch 1")
    'validation loss 7.5 at epoch 1 is above 3x its initial 2.3: the trial diverged'
    >>> divergence_reason(1.1, initial=2.3) is None
    True
    """
    if not math.isfinite(value):
        return f"validation loss is {value}{where}: the trial diverged"
    if initial is not None and math.isfinite(initial) and initial > 0 and value > factor * initial:
        return f"validation loss {value:.4g}{where} is above {factor:g}x its initial {initial:.4g}: the trial diverged"
    return None


class DivergencePruner(BasePruner):
    """Prunes a trial whose last reported validation loss is not finite or above ``factor``
    times its value at initialization (the trial's ``initial_val_loss`` user attribute), and
    otherwise asks ``wrapped`` (default: Optuna's MedianPruner), which compares the reported
    validation losses as losses (lower is better) whatever the study's direction.

    The divergence test comes first and has no warm-up: the median rule waits for
    ``n_startup_trials`` finished trials and ``n_warmup_steps`` epochs, and a trial that
    turns to NaN in that time would otherwise run on and fail.

    Example
    -------
    >>> import optuna
    >>> study = optuna.create_study(pruner=DivergencePruner())
    >>> trial = study.ask()
    >>> trial.set_user_attr("initial_val_loss", 2.3)
    >>> trial.report(9.0, step=1)
    >>> trial.should_prune()
    True
    """

    def __init__(self, wrapped: BasePruner | None = None, factor: float = DIVERGENCE_FACTOR):
        self.wrapped = wrapped if wrapped is not None else MedianPruner()
        self.factor = factor

    def divergence(self, trial: FrozenTrial) -> str | None:
        """The reason ``trial`` diverged at its last reported step, or None."""
        step = trial.last_step
        if step is None:
            return None
        return divergence_reason(trial.intermediate_values[step], trial.user_attrs.get("initial_val_loss"),
                                 self.factor, f" at step {step}")

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.divergence(trial) is not None or self.wrapped.prune(_LossView(study), trial)


def make_pruner(epochs: int) -> DivergencePruner:
    """The search's pruner for trials of ``epochs`` epochs: the divergence rule around Optuna's
    median rule, which starts after :data:`MEDIAN_STARTUP_TRIALS` finished trials and judges a
    trial after :data:`MEDIAN_WARMUP_FRACTION` of its epochs (at least one).

    Example
    -------
    >>> type(make_pruner(30).wrapped).__name__
    'MedianPruner'
    """
    return DivergencePruner(MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                         n_warmup_steps=max(1, round(MEDIAN_WARMUP_FRACTION * epochs))))


class _LossView:
    """The study as the wrapped pruner sees it: the reported values are validation losses, lower
    is better, even when the study maximizes its score (a validation accuracy). Optuna's
    median and percentile rules read only ``direction`` and ``get_trials`` from a study."""

    direction = optuna.study.StudyDirection.MINIMIZE

    def __init__(self, study: optuna.Study):
        self._study = study

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return self._study.get_trials(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class TrialReporter(Callback):
    """A training callback that reports each epoch's validation loss to an Optuna trial and
    stops the run cleanly (``trainer.state.stop``) when the study's pruner says so.

    ``val`` is the validation split the run measures (the reporter measures it once more, on
    the initialised network, for the divergence rule's reference); ``step_offset`` shifts the
    reported steps (fold k of a cross-validated trial reports from ``k * epochs``). It keeps
    the lowest validation loss and the highest validation accuracy of the run.
    """

    def __init__(self, trial: optuna.Trial, val: Split, step_offset: int = 0,
                 factor: float = DIVERGENCE_FACTOR):
        self.trial = trial
        self.val = val
        self.step_offset = step_offset
        self.factor = factor
        self.initial: float | None = None
        self.best = {"val_loss": math.inf, "val_acc": -math.inf}
        self.pruned_reason: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        device = next(trainer.model.parameters()).device
        measured = evaluate(trainer.model, trainer.loss_fn, self.val.to(device), autocast=trainer.autocast)
        self.initial = measured["loss"]
        # stored as JSON: a non-finite initial loss is null (no reference, as for NaN, for the divergence rule)
        self.trial.set_user_attr("initial_val_loss", jsonable(self.initial))

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        value = logs.get("val_loss")
        if value is None:
            return
        epoch = trainer.state.epoch
        self.trial.report(value, self.step_offset + epoch)
        if math.isfinite(value):
            self.best["val_loss"] = min(self.best["val_loss"], value)
        if "val_acc" in logs:
            self.best["val_acc"] = max(self.best["val_acc"], logs["val_acc"])
        reason = None
        if trainer.state.diverged:  # the run's own explosion guard (checks.monitors) stopped it
            reason = trainer.state.stop_reason or "the explosion guard stopped the run"
        elif self.trial.should_prune():
            reason = divergence_reason(value, self.initial, self.factor, f" at epoch {epoch}") or (
                f"median rule: the best validation loss by epoch {epoch} ({self.best['val_loss']:.4g}) is worse "
                f"than the median of the finished trials at that epoch")
        if reason is not None:
            self.pruned_reason = reason
            trainer.state.stop = True
            trainer.state.stop_reason = f"pruned by the search: {reason}"


__all__ = ["DIVERGENCE_FACTOR", "MEDIAN_STARTUP_TRIALS", "MEDIAN_WARMUP_FRACTION", "DivergencePruner",
           "TrialReporter", "divergence_reason", "make_pruner"]
