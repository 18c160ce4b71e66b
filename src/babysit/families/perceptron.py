"""The perceptron family: any network trained on the perceptron criterion (``loss:
perceptron``, which ``model.kind: perceptron`` defaults to), i.e. Rosenblatt's rule.

What it changes (the criterion and the rule themselves are in :mod:`babysit.optim.perceptron`):

- :class:`SeparationStop` counts the mistakes of each epoch (``mistakes`` in
  metrics.jsonl) and stops the run after an epoch without one;
- the summary adds ``mistakes`` (over the whole run, resumed segments too) and ``separated``;
- the explosion guard stops only a NaN / inf loss: the criterion has no fixed scale (it
  grows with ||w||), so "3x the initial loss" says nothing about divergence;
- the update-ratio and lr rules of thumb and the loss-trend ``not_converged`` do not apply
  (the mistake-driven steps are exactly 0 on every correct example, and from w = 0 the lr
  only scales w, never a decision); a perceptron has converged when an epoch makes no
  mistake, and :func:`separation_finding` says when it did not.

Example
-------
>>> from babysit.config import Experiment
>>> PERCEPTRON.claims(Experiment(model={"kind": "perceptron"})), PERCEPTRON.explosion_factor(Experiment())
(True, inf)
"""

from __future__ import annotations

import math
from typing import Any

from babysit.checks.findings import Finding
from babysit.config import Experiment
from babysit.families.protocol import RunContext
from babysit.families.standard import FIRST_ORDER_RULES, StandardFamily
from babysit.optim.perceptron import PerceptronCriterion
from babysit.rundir import read_json, read_jsonl
from babysit.train.loop import Callback, Trainer


class SeparationStop(Callback):
    """Counts the perceptron's mistakes per epoch and stops once an epoch has none.

    Put it before the metrics logger: it adds ``mistakes`` to the epoch's logs. It sets
    ``trainer.state.stop`` with ``stop_reason`` "separated: ..." after an epoch in which no
    training example was misclassified by any unit. :attr:`per_epoch` holds the counts.

    Example
    -------
    >>> import torch
    >>> from babysit.data.batching import Batches
    >>> x = torch.tensor([[2.0, 1.0], [1.0, 2.0], [-2.0, -1.0], [-1.0, -2.0]])
    >>> y = torch.tensor([1, 1, 0, 0])
    >>> model = torch.nn.Linear(2, 1)
    >>> _ = torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    >>> criterion = PerceptronCriterion()
    >>> stop = SeparationStop(criterion)
    >>> trainer = Trainer(model, criterion, torch.optim.SGD(model.parameters(), lr=1.0), callbacks=[stop])
    >>> state = trainer.fit(Batches(x, y, 1, torch.Generator().manual_seed(0)), epochs=10)
    >>> stop.per_epoch[-1], state.stop_reason.split(":")[0]
    (0, 'separated')
    """

    def __init__(self, criterion: PerceptronCriterion):
        self.criterion = criterion
        self.per_epoch: list[int] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.criterion.counting = True

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.criterion.reset()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        counted = self.criterion.mistakes
        mistakes = 0 if counted is None else int(counted.item())
        logs["mistakes"] = mistakes
        self.per_epoch.append(mistakes)
        if mistakes == 0 and not trainer.state.diverged:
            trainer.state.stop = True
            trainer.state.stop_reason = (
                f"separated: no mistake in epoch {trainer.state.epoch}, "
                f"{sum(self.per_epoch)} mistakes before it"
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        self.criterion.counting = False
        self.criterion.reset()


def separation_finding(history: list[dict[str, Any]], summary: dict[str, Any]) -> Finding | None:
    """``not_converged`` (a warning) for a perceptron run that ended with mistakes in its last
    epoch, from the epoch records of metrics.jsonl and summary.json; None when it separated
    the data (or diverged, which the explosion guard reports).

    Example
    -------
    >>> f = separation_finding([{"epoch": 1, "step": 9, "mistakes": 4}, {"epoch": 2, "step": 18, "mistakes": 3}], {})
    >>> f.id, f.severity, f.evidence["last_epoch_mistakes"]
    ('not_converged', 'warning', 3)
    """
    epochs = [r for r in history if isinstance(r.get("mistakes"), int)]
    if not epochs or summary.get("separated") or summary.get("diverged") or epochs[-1]["mistakes"] == 0:
        return None
    last, total = epochs[-1], sum(r["mistakes"] for r in epochs)
    return Finding(
        "not_converged", "warning",
        f"The perceptron did not separate the training data: it still made {last['mistakes']} mistakes "
        f"in its last epoch ({last.get('epoch')}), {total} in all. If the data are linearly separable in "
        "its feature space, more epochs will separate them (Novikoff 1962: at most (R/γ)² mistakes); "
        "if not, the rule never settles and the weights keep cycling (Minsky & Papert 1969).",
        "Train longer (train.epochs) if the data should be separable; otherwise give the perceptron a "
        "richer basis (model.basis: polynomial or fourier) or hidden layers (model.kind: mlp).",
        {"last_epoch_mistakes": last["mistakes"], "mistakes": total, "epochs": len(epochs)},
        step=last.get("step"),
    )


class PerceptronFamily(StandardFamily):
    name = "perceptron"

    def claims(self, spec: Experiment) -> bool:
        return spec.loss == "perceptron"

    def callbacks(self, run: RunContext) -> list[Callback]:
        # first: it adds the epoch's mistakes to its logs
        return [SeparationStop(run.loss_fn), *super().callbacks(run)]

    def explosion_factor(self, spec: Experiment) -> float:
        return math.inf

    def findings(self, run: RunContext) -> list[Finding]:
        found = [f for f in super().findings(run) if f.id not in (*FIRST_ORDER_RULES, "not_converged")]
        unseparated = separation_finding(read_jsonl(run.path / "metrics.jsonl"), read_json(run.path / "summary.json", {}))
        return found + ([unseparated] if unseparated is not None else [])

    def summary_extra(self, run: RunContext, summary: dict[str, Any]) -> dict[str, Any]:
        history = read_jsonl(run.path / "metrics.jsonl")  # the whole run, resumed segments too
        return {"mistakes": sum(r.get("mistakes", 0) for r in history),
                "separated": str(summary.get("stop_reason") or "").startswith("separated")}


PERCEPTRON = PerceptronFamily()

__all__ = ["PERCEPTRON", "PerceptronFamily", "SeparationStop", "separation_finding"]
