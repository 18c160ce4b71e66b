"""``sharpness.jsonl``: the sharpness λmax at a fixed evaluation batch every N optimizer steps.

The edge-of-stability check (``checks.sharpness_every: N``; Cohen et al. 2021, arXiv
2103.00065; 2022, arXiv 2207.14484). Every N steps the top eigenvalue of the Hessian of the
training loss on a fixed batch (the first ``examples`` training examples, the same ones all
run) is found by Lanczos (:func:`babysit.landscape.spectrum.hessian_eigenvalues`), warm-
started from the previous sample's eigenvector: the top direction moves little in N steps,
so a sample costs a few Hessian-vector products instead of the dozens of a cold start. For
Adam, AdamW, RMSprop and Adagrad it is the preconditioned sharpness λmax(P⁻¹H), found as
λmax(P^-½ H P^-½) (the same eigenvalues) with P the optimizer's diagonal at that step.

One JSON line a sample: ``step``, ``epoch``, ``lambda_max``, ``quantity`` (λmax(H) or
λmax(P⁻¹H)), ``lr`` (the optimizer's first group, as the next step uses it), ``threshold``
(:func:`babysit.checks.sharpness.stability_rule`: 2/η, 2(1+m)/η, ...) and its ``rule``,
``ratio`` = λmax/threshold (λmax·η/2 for plain GD), ``loss`` (at the evaluation batch),
``matvecs`` (Hessian-vector products the sample took), ``residual`` (‖Hv − λv‖/|λ|),
``converged``, ``examples``. An optimizer without a threshold (L-BFGS, Newton, Quickprop)
gets λmax with ``threshold`` null and a ``note``; a model whose loss autograd cannot
differentiate twice gets one ``skipped`` line and no more samples.

The Hessian is taken in eval mode (dropout off, BatchNorm on its running statistics), of
the loss alone (no L1 / activity penalty), in the parameters' own dtype. A sample runs in
the training process between two steps; nothing happens on the other steps. A product costs
about 3-4 gradients of the evaluation batch, and a warm-started sample takes about 10 of them
(9-13 on a 40-100-100-10 MLP during SGD at batch 128; 10-15 at the edge of stability), so a
sample costs some 30 x (examples / batch size) training steps: on that MLP (CPU, one thread)
sharpness_every 10 made training 12x slower and 100 2x. Sample every few hundred steps for
minibatch runs; full-batch runs (evaluation batch = the batch) pay about 35 steps a sample.

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
>>> x, y = torch.randn(32, 3).double(), torch.randn(32, 1).double()
>>> first = measure_sharpness(model, nn.MSELoss(), (x, y), tol=1e-8)
>>> again = measure_sharpness(model, nn.MSELoss(), (x, y), start=first.vector, tol=1e-8)
>>> abs(again.lambda_max - first.lambda_max) < 1e-9, again.matvecs < first.matvecs
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from babysit.checks.sharpness import (
    Stability,
    effective_lr,
    preconditioner_diagonal,
    stability_rule,
)
from babysit.landscape.hvp import HessianOperator, LossFn
from babysit.landscape.spectrum import hessian_eigenvalues
from babysit.rundir import json_line, truncate_jsonl
from babysit.train.loop import Callback, Trainer

# the first this many training examples are the evaluation batch (the whole set when smaller:
# full-batch GD then sees exactly the Hessian of its own loss)
EVAL_EXAMPLES = 1024
# Lanczos stops when the top Ritz pair's residual is below this fraction of |λ|: λ is then
# within 0.1% (a Ritz value is a lower bound, off by at most the residual), far inside the
# 10% margins of the findings; a float32 product is good to about 1e-6 of that
TOLERANCE = 1e-3
MAX_PRODUCTS = 60  # per sample; a sample that needs more is recorded with converged: false


@dataclass
class SharpnessSample:
    """One measurement: λmax, its unit eigenvector (flat, over ``names``), the loss at the
    batch, the products used, the relative residual ‖Hv − λv‖/|λ| and whether it met ``tol``."""

    lambda_max: float
    vector: Tensor
    loss: float
    matvecs: int
    residual: float
    converged: bool
    names: list[str]


def measure_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[Tensor, Tensor],
    *,
    params: Sequence[str] | None = None,
    scale: Tensor | None = None,
    start: Tensor | None = None,
    tol: float = TOLERANCE,
    max_steps: int = MAX_PRODUCTS,
    seed: int = 0,
) -> SharpnessSample:
    """λmax of the Hessian of ``loss_fn`` on ``data`` at the model's weights, by Lanczos.

    ``scale`` s (flat, over ``params``) makes it λmax(diag(s) H diag(s)); with s = P^-½ that is
    the preconditioned sharpness λmax(P⁻¹H). ``start`` warm-starts Lanczos (the previous
    sample's ``vector``). The model is left as it was (see :mod:`babysit.landscape.hvp`).
    """
    op = HessianOperator(model, loss_fn, data, params=params, scale=scale)
    loss = op.loss()
    if not math.isfinite(loss):
        return SharpnessSample(math.nan, torch.zeros(0), loss, 0, math.nan, False, list(op.names))
    if start is not None and (start.shape != (op.dim,) or not bool(torch.isfinite(start).all())):
        start = None
    top = hessian_eigenvalues(op, k=1, which="top", tol=tol, max_steps=max_steps, seed=seed, start=start)
    value = float(top.eigenvalues[0])
    residual = float(top.residuals[0]) / max(abs(value), 1e-300)
    return SharpnessSample(value, top.eigenvectors[0], loss, top.matvecs, residual, top.converged, list(op.names))


class SharpnessCallback(Callback):
    """Samples the sharpness every ``every`` optimizer steps into ``path`` (see the module).

    Parameters
    ----------
    path: the JSON Lines file (``<run>/sharpness.jsonl``).
    every: sample after every N-th optimizer step (steps N, 2N, ...).
    data: the training ``(x, y)``, on the model's device; its first ``examples`` rows are the
        evaluation batch.
    loss_fn: the training loss ``loss_fn(model(x), y)``, a batch mean.
    """

    def __init__(self, path: str | Path, *, every: int, data: tuple[Tensor, Tensor], loss_fn: LossFn,
                 examples: int = EVAL_EXAMPLES, tol: float = TOLERANCE, max_steps: int = MAX_PRODUCTS):
        self.path = Path(path)
        self.every = every
        x, y = data
        self.batch = (x[:examples], y[:examples])
        self.loss_fn = loss_fn
        self.tol, self.max_steps = tol, max_steps
        self.vector: Tensor | None = None
        self.rule: Stability | None = None
        self.names: list[str] | None = None
        self._handle: IO[str] | None = None
        self._done = False

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.state.step > 0:  # resumed: the steps after the checkpoint are sampled anew
            truncate_jsonl(self.path, trainer.state.step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self.rule = stability_rule(trainer.optimizer)
        held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        self.names = [n for n, p in trainer.model.named_parameters() if p.requires_grad and id(p) in held]
        if not self.names:
            self._skip(trainer, "the optimizer holds none of the model's trainable parameters")

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json_line(record) + "\n")
        self._handle.flush()  # a line every N steps: cheap next to the sample itself

    def _skip(self, trainer: Trainer, reason: str) -> None:
        self._write({"step": trainer.state.step, "skipped": f"sharpness not tracked: {reason}"})
        self._done = True

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self._done or trainer.state.step % self.every:
            return
        assert self.rule is not None and self.names is not None
        model, optimizer, rule = trainer.model, trainer.optimizer, self.rule
        scale = None
        if rule.preconditioner is not None:
            named = dict(model.named_parameters())
            diagonal = preconditioner_diagonal(optimizer, [named[n] for n in self.names], rule.preconditioner)
            scale = diagonal.rsqrt()
        try:
            sample = measure_sharpness(model, self.loss_fn, self.batch, params=self.names, scale=scale,
                                       start=self.vector, tol=self.tol, max_steps=self.max_steps,
                                       seed=trainer.state.step)
        except RuntimeError as error:  # an op without a double backward (a custom autograd function)
            self._skip(trainer, f"the loss cannot be differentiated twice ({str(error).splitlines()[0][:200]})")
            return
        lr = effective_lr(optimizer)
        threshold = rule.threshold(lr)
        finite = math.isfinite(sample.lambda_max)
        self.vector = sample.vector if finite else None
        record: dict[str, Any] = {
            "step": trainer.state.step,
            "epoch": trainer.state.epoch,
            "lambda_max": sample.lambda_max,
            "quantity": rule.quantity,
            "lr": lr,
            "threshold": threshold,
            "rule": rule.rule,
            "ratio": sample.lambda_max / threshold if threshold and finite else None,
            "loss": sample.loss,
            "matvecs": sample.matvecs,
            "residual": sample.residual,
            "converged": sample.converged,
            "examples": len(self.batch[0]),
        }
        if rule.note:
            record["note"] = rule.note
        self._write(record)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


__all__ = ["EVAL_EXAMPLES", "MAX_PRODUCTS", "TOLERANCE", "SharpnessCallback", "SharpnessSample",
           "measure_sharpness"]
