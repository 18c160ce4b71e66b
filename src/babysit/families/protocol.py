"""What a model family tells the run path: the :class:`Family` protocol.

The run path (:mod:`babysit.run`) is one path for every family. Everything it does
differently for a kind of model, it asks the spec's family: what to refuse, how to adapt the
data, how to build the network and its optimizer, whether the loop needs a step of the
family's own, which callbacks, preflight, findings, summary fields and artifacts it adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from babysit.checks.findings import Finding
from babysit.config import Experiment
from babysit.data import Splits
from babysit.train.loop import Callback, Step, Trainer


@dataclass
class RunContext:
    """What a family's run-time hooks see of the run being made."""

    spec: Experiment
    path: Path  # the run directory
    splits: Splits  # adapted, on the device
    model: nn.Module
    loss_fn: Any
    steps_per_epoch: int
    resume: bool = False


@runtime_checkable
class Family(Protocol):
    """A model family: the kinds of model that train, are checked and are reported alike.

    Adding a family is one module in ``babysit/families/`` with an object satisfying this
    protocol, and one line in :data:`babysit.families.FAMILIES`.
    """

    name: str
    # the end-of-run table shows these summary keys instead of a loss per split (empty: per split)
    result_keys: tuple[str, ...]
    # whether the run stops early and keeps its best weights (train.early_stopping)
    early_stopping: bool
    # why the commands that take one network and one loss (lr-find, batch-find, landscape,
    # search) refuse this family; None: they take it
    single_network_refusal: str | None

    def claims(self, spec: Experiment) -> bool:
        """Whether ``spec`` belongs to this family (the registry asks each in turn)."""
        ...

    def validate(self, spec: Experiment) -> None:
        """Raise a BabysitError for what the family cannot train (``check`` and ``train`` both call it)."""
        ...

    def adapt(self, spec: Experiment, splits: Splits) -> Splits:
        """The splits as the family trains on them (an autoencoder's targets are its inputs)."""
        ...

    def build(self, spec: Experiment, splits: Splits) -> tuple[nn.Module, Any]:
        """The initialised network and its loss."""
        ...

    def optimizer(self, spec: Experiment, model: nn.Module, steps_per_epoch: int) -> tuple[Any, Any]:
        """The optimizer (or the family's optimizers as one object) and the lr schedule (or None)."""
        ...

    def train_step(self, spec: Experiment, model: nn.Module, optimizer: Any) -> Step | None:
        """The family's own update for the loop (:class:`babysit.train.loop.Step`), or None for the standard one."""
        ...

    def callbacks(self, run: RunContext) -> list[Callback]:
        """Callbacks the family adds; they run first at each hook (they may add to an epoch's logs)."""
        ...

    def explosion_factor(self, spec: Experiment) -> float:
        """The monitors' explosion guard factor (``inf``: only NaN / inf stop the run)."""
        ...

    def preflight(self, spec: Experiment, model: nn.Module, loss_fn: Any, splits: Splits,
                  run_dir: Path | None = None) -> list[Finding]:
        """The checks before the first step; ``run_dir``: where they may leave files (leakage.json),
        None when nothing is written (``babysit check``)."""
        ...

    def findings(self, run: RunContext) -> list[Finding]:
        """The findings after the run: monitor rules, curve diagnosis and the family's own rules."""
        ...

    def metrics(self, run: RunContext, trainer: Trainer) -> dict[str, Any]:
        """The run's final figures for summary.json (loss and accuracy per split, or the family's own)."""
        ...

    def summary_extra(self, run: RunContext, summary: dict[str, Any]) -> dict[str, Any]:
        """More summary.json fields, written after the common ones (``summary``: the fields so far)."""
        ...

    def artifacts(self, run: RunContext) -> None:
        """Write the family's extra files into the run directory (reconstructions, samples, text)."""
        ...


__all__ = ["Family", "RunContext"]
