"""Mislabeled examples (``checks.label_noise``): confident learning over cross-validated probabilities.

Confident learning (Northcutt, Jiang & Chuang 2021, "Confident learning: estimating uncertainty
in dataset labels", JAIR 70, arXiv 1911.00068) judges each training label by a model that never
saw it:

1. **Out-of-sample probabilities** p̂(k | x) for every training example, from K-fold
   cross-validation of the run's own network, loss and optimizer
   (:func:`cross_validated_probabilities`: K fits, each on (K-1)/K of the training split,
   predicting the remaining fold).
2. **Per-class thresholds** t_j = the mean of p̂_j over the examples labelled j: how confident
   the model is, on average, in class j when j is the given label (:func:`confident_thresholds`).
3. **The confident joint** C[i][j]: the examples labelled i whose p̂_j >= t_j, counted under the
   class j with the largest p̂ among those over their thresholds (paper, Eq. 1;
   :func:`confident_joint`). Its off-diagonal entries count the examples confidently in a class
   other than their label.
4. **The noise rate**: the confident joint calibrated so each row sums to its class's count and
   normalised, Q̂[i][j] ≈ P(given i, true j) (paper, Eq. 2 and 3); 1 - trace(Q̂) is the estimated
   fraction of wrong labels (:func:`calibrated_joint`).
5. **The suspects**: that many examples, round(N (1 - trace Q̂)), those with the lowest normalized
   margin p̂_given - max_{k != given} p̂_k (the score of the paper's prune-by-noise-rate), among the
   examples the model does not give their label as its best answer (:func:`find_label_issues`).
   They are written, most suspect first, with their given and predicted labels and probabilities,
   to ``label_issues.json`` in the run directory.

cleanlab's own default (``cleanlab.filter.find_label_issues``, ``filter_by="prune_by_noise_rate"``)
cuts each off-diagonal cell of the joint to its own count, which on small data is a handful of
examples per cell, then drops some: on the same probabilities babysit finds more of the wrong labels
at the same precision (:func:`find_label_issues`; tests/test_label_noise.py).

A weak network cannot tell a wrong label from its own confusion: on clean MNIST-1D the example MLP
(65% accurate held out) makes confident learning estimate 32% wrong labels, as many as 30%
injected noise gives on digits. What tells them apart is how sure the held-out networks are of the
suspects' other class: the ``label_noise`` warning needs that witness (:data:`WITNESS_CONFIDENCE`);
without it the finding is info and says so.

What is skipped (an info, no fits): a task without classes (regression, an autoencoder), one
label per position (a language model), a loss that gives no probabilities (hinge, mse, the
perceptron's), and a class with fewer training examples than folds (a fold would hold none of it,
or its training part too few to learn it). Cost: K fits of (K-1)/K of the training split, each for
as many epochs as the run's best epoch (early stopping) or its epochs: about K - 1 = 4 times the
run's own training, on the run's device.

Example
-------
>>> import torch
>>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.95, 0.05]])
>>> labels = torch.tensor([0, 0, 1, 1, 1])  # the last is labelled 1 but looks like a 0
>>> issues = find_label_issues(probs, labels, 2)
>>> issues.suspects, confident_joint(probs, labels).counts.tolist()
([4], [[1, 0], [1, 2]])
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from babysit import nets
from babysit.checks.answers import class_logits
from babysit.checks.findings import Finding
from babysit.config import Experiment
from babysit.data import Split, Splits
from babysit.data.batching import Batches
from babysit.optim import losses, regularization
from babysit.rundir import save_npz, write_json
from babysit.train.loop import Step, Trainer

FOLDS = 5  # Northcutt et al. 2021 use 4-fold cross-validation on CIFAR; cleanlab's default cv_n_folds is 5
# p̂_j >= t_j - this counts as confident: cleanlab's FLOATING_POINT_COMPARISON (count.compute_confident_joint),
# so an example at exactly its class's mean is not lost to rounding in the mean
CONFIDENT_TOLERANCE = 1e-6
# The noise rate (1 - trace of the calibrated joint) a CLEAN data set gives: at or under it, no finding.
# Measured: sklearn digits as babysit splits it (1294 training examples), an MLP [64] (adam, lr 3e-3,
# batch 64), 5 folds x 30 epochs, seeds 0-9: mean 0.24%, sd 0.11%, max 0.44% (mean + 3 sd = 0.57%).
# The bar, 1%, is mean + 7 sd. A clean set with a weaker network gives more (see WITNESS_CONFIDENCE).
CLEAN_NOISE_RATE = 0.01
# A warning from this estimated noise rate. Northcutt, Athalye & Mueller 2021 ("Pervasive label errors in
# test sets destabilize machine learning benchmarks", arXiv 2103.14749) find 3.3% wrong labels on average
# in ten benchmark test sets, and model rankings flip when the mislabeled share grows by 5% (CIFAR-10:
# VGG-11 over VGG-19) or 6% (ImageNet: ResNet-18 over ResNet-50): from 5% wrong labels change conclusions.
# Measured: digits with 5% / 10% symmetric noise injected give 5.4% / 10.1% (seed 0; 10%: 9.8-11.1% over
# seeds 0-4).
WARN_NOISE_RATE = 0.05
# The warning also needs the held-out networks to be sure of the suspects' other class: the median over
# the suspects of p̂(predicted class) at least this. Measured (5 folds, as above): clean MNIST-1D with
# examples/mnist1d-mlp.yaml (50 epochs a fold): 0.514-0.535 over seeds 0-4 (mean 0.523, sd 0.008), with an
# estimated noise rate of 32% that is the network's confusion, not wrong labels; digits with 10% noise:
# 0.87-0.92 (seeds 0-4), 20%: 0.76, 30%: 0.65, 40%: 0.54 (seed 0). The bar, 0.6, is mean + 9 sd above
# clean MNIST-1D; past about 35% symmetric noise digits' witnesses are as unsure as MNIST-1D's and the
# finding is info (labels that noisy and a weak network look alike from the probabilities).
WITNESS_CONFIDENCE = 0.6
MESSAGE_SUSPECTS = 3  # suspects quoted in the message
EVIDENCE_SUSPECTS = 50  # suspects kept in the finding's evidence (label_issues.json has them all)
SHOWN_SUSPECTS = 16  # suspects drawn in the report (label_issues.npz)
LABEL_ISSUES_FILE = "label_issues.json"
LABEL_ISSUES_EXAMPLES_FILE = "label_issues.npz"
PREDICT_BATCH = 4096
MAX_JOINT_CLASSES = 100  # the confident joint (C x C) is written out up to this many classes (as the confusion matrix)
REFERENCE = ("Northcutt, Jiang & Chuang 2021, \"Confident learning: estimating uncertainty in dataset labels\", "
             "JAIR, arXiv 1911.00068")


class Builds(Protocol):
    """What the cross-validation fits need of a model family (:class:`babysit.families.Family` has it)."""

    def build(self, spec: Experiment, splits: Splits) -> tuple[nn.Module, Any]: ...
    def optimizer(self, spec: Experiment, model: nn.Module, steps_per_epoch: int) -> tuple[Any, Any]: ...
    def train_step(self, spec: Experiment, model: nn.Module, optimizer: Any) -> Step | None: ...


# --------------------------------------------------------------------------- out-of-sample probabilities


def stratified_folds(labels: Tensor, folds: int, seed: int) -> Tensor:
    """Fold id (0 .. folds-1) of each example, (N,) int64 on the CPU: a seeded permutation, each
    class dealt round the folds in turn (the next class going on from where the last stopped),
    so every fold holds each class's share to within one example.

    Example
    -------
    >>> import torch
    >>> fold = stratified_folds(torch.tensor([0, 0, 0, 1, 1, 1]), 3, seed=0)
    >>> [sorted(fold[torch.tensor([0, 0, 0, 1, 1, 1]) == c].tolist()) for c in (0, 1)]
    [[0, 1, 2], [0, 1, 2]]
    """
    y = labels.detach().cpu().numpy()
    order = np.random.default_rng((seed % 2**64, 5)).permutation(len(y))  # a stream of its own
    fold = np.empty(len(y), dtype=np.int64)
    dealt = 0
    for c in np.unique(y):
        members = order[y[order] == c]
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return torch.from_numpy(fold)


@torch.no_grad()
def predicted_probabilities(model: nn.Module, x: Tensor, loss_name: str,
                            autocast: Callable[[], Any] = contextlib.nullcontext,
                            batch_size: int = PREDICT_BATCH) -> Tensor:
    """p̂(k | x) (N, C) float64 on the CPU, in eval mode: the softmax of the logits the loss
    implies (:func:`babysit.checks.answers.class_logits`)."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for start in range(0, len(x), batch_size):
            with autocast():
                out = model(x[start:start + batch_size])
            logits = class_logits(out.float(), loss_name)
            if logits is None:
                raise ValueError(f"loss {loss_name!r} gives no class probabilities")
            rows.append(logits.double().softmax(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows)


def _penalty(spec: Experiment, model: nn.Module) -> tuple[Callable[[nn.Module], Tensor] | None,
                                                          regularization.ActivityRegularizer | None]:
    """The run's L1 and activity penalties for one fit (as the run path's ``make_penalty``)."""
    reg = spec.regularization
    return regularization.penalty_function(reg.l1, reg.activity, nets.activation_modules(model))


def cross_validated_probabilities(spec: Experiment, splits: Splits, folds: int = FOLDS, epochs: int | None = None,
                                  *, family: Builds) -> Tensor:
    """Out-of-sample p̂(k | x) for every training example, (N, C) float64 on the CPU.

    The training split is cut into ``folds`` stratified folds (:func:`stratified_folds`, seeded
    by ``spec.seed``); for each, a fresh network is built, initialised and trained on the other
    folds by ``family`` exactly as the run's (its build, optimizer, schedule and step; the
    run's precision, gradient clipping, input noise, L1 / activity penalty and max-norm), for
    ``epochs`` epochs (default: ``spec.train.epochs``) with no early stopping (the held-out fold
    must not choose anything), and predicts the held-out fold. The data's preprocessing stays
    the one fitted on the whole training split: it never reads a label. ``train.compile`` is
    left off (each fit is short; compiling K networks would cost more than it saves). The global
    torch RNG is left as it was."""
    train = splits.train
    epochs = spec.train.epochs if epochs is None else max(int(epochs), 1)
    fold_of = stratified_folds(train.y, folds, spec.seed).to(train.x.device)
    num_classes = splits.num_classes
    assert num_classes is not None
    probabilities = torch.zeros(len(train), num_classes, dtype=torch.float64)
    device = train.x.device
    # the CPU generator is always forked; an accelerator's too, for the device the fits run on
    fork = {"devices": [device], "device_type": device.type} if device.type != "cpu" else {"devices": []}
    max_norm = spec.regularization.max_norm
    after_step = (lambda m: regularization.apply_max_norm(m, max_norm)) if max_norm else None
    for k in range(folds):
        held = fold_of == k
        part = Splits(train=Split(train.x[~held], train.y[~held]), val=None, test=None, task=splits.task,
                      num_classes=num_classes, input_shape=splits.input_shape, target_dim=splits.target_dim,
                      class_names=splits.class_names, preprocessor=splits.preprocessor)
        with torch.random.fork_rng(**fork):
            torch.manual_seed((spec.seed * 7919 + 104729 * (k + 1)) % 2**63)  # fold k's own initialisation
            model, loss_fn = family.build(spec, part)
            model = model.to(device)
            batches = Batches(part.train.x, part.train.y, spec.data.batch_size,
                              torch.Generator().manual_seed((spec.seed + k + 1) % 2**63))
            optimizer, schedule = family.optimizer(spec, model, len(batches))
            penalty, activity = _penalty(spec, model)
            trainer = Trainer(model, loss_fn, optimizer, schedule=schedule, penalty=penalty, after_step=after_step,
                              input_noise=spec.regularization.input_noise, grad_clip=spec.optimizer.grad_clip,
                              precision=spec.train.precision, step=family.train_step(spec, model, optimizer),
                              spike_factor=None)
            trainer.fit(batches, epochs)
            if activity is not None:
                activity.remove()
            probabilities[held.cpu()] = predicted_probabilities(model, train.x[held], spec.loss, trainer.autocast)
    return probabilities


# --------------------------------------------------------------------------- confident learning


def confident_thresholds(probs: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """t_j = mean of p̂_j over the examples labelled j, (C,) float64; a class no example is
    labelled with gets 2.0 (no probability reaches it, as cleanlab's ``get_confident_thresholds``).

    Example
    -------
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]], dtype=torch.float64)
    >>> [round(t, 6) for t in confident_thresholds(probs, torch.tensor([0, 0, 1])).tolist()]
    [0.8, 0.6]
    """
    probs, labels = probs.double().cpu(), labels.long().cpu()
    num_classes = probs.shape[1] if num_classes is None else num_classes
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, probs[torch.arange(len(labels)), labels])
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, 2.0))


@dataclass
class ConfidentJoint:
    """``counts[i][j]``: examples labelled i confidently in class j (C, C) int64; ``true``: each
    example's confident class (N,), -1 where no class reaches its threshold; ``thresholds`` (C,)."""

    counts: Tensor
    true: Tensor
    thresholds: Tensor


def confident_joint(probs: Tensor, labels: Tensor, thresholds: Tensor | None = None) -> ConfidentJoint:
    """The confident joint (Northcutt et al. 2021, Eq. 1): an example labelled i counts in C[i][j]
    for j = argmax of p̂ over the classes whose p̂_j >= t_j (:data:`CONFIDENT_TOLERANCE`); an
    example over no threshold counts nowhere.

    cleanlab's ``count.compute_confident_joint(calibrate=False)`` takes the argmax over all classes
    when two or more are confident, and raises an empty diagonal entry to 1: where no example's
    overall argmax is under its threshold while another class is over, and no class is empty,
    the two matrices are equal (tests/test_label_noise.py).

    Example
    -------
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    >>> cj = confident_joint(probs, torch.tensor([0, 0, 0]))  # t_0 = 0.6; no example is labelled 1: t_1 = 2
    >>> cj.counts.tolist(), cj.true.tolist()
    ([[2, 0], [0, 0]], [0, 0, -1])
    """
    probs, labels = probs.double().cpu(), labels.long().cpu()
    num_classes = probs.shape[1]
    thresholds = confident_thresholds(probs, labels, num_classes) if thresholds is None else thresholds.double().cpu()
    confident = probs >= thresholds - CONFIDENT_TOLERANCE
    masked = torch.where(confident, probs, torch.full_like(probs, -math.inf))
    true = torch.where(confident.any(1), masked.argmax(1), torch.full_like(labels, -1))
    counted = true >= 0
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    counts.index_add_(0, labels[counted] * num_classes + true[counted], torch.ones(int(counted.sum()), dtype=torch.int64))
    return ConfidentJoint(counts.reshape(num_classes, num_classes), true, thresholds)


def calibrated_joint(counts: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Q̂[i][j] ≈ P(given label i, true label j), (C, C) float64 summing to 1 (Northcutt et al.
    2021, Eq. 2-3): each row of the confident joint rescaled to its class's count of given labels,
    then the whole normalised. A row with no confident example is taken as all correct (its
    diagonal raised to 1 first, as cleanlab does). ``1 - trace`` is the estimated noise rate.

    Example
    -------
    >>> import torch
    >>> q = calibrated_joint(torch.tensor([[3, 1], [0, 4]]), torch.tensor([0] * 8 + [1] * 2))
    >>> [round(v, 3) for v in q.flatten().tolist()], round(1 - q.trace().item(), 3)
    ([0.6, 0.2, 0.0, 0.2], 0.2)
    """
    num_classes = counts.shape[0] if num_classes is None else num_classes
    c = counts.double().clone()
    c.diagonal().clamp_(min=1)
    given = torch.bincount(labels.long().cpu(), minlength=num_classes).double()
    q = c / c.sum(1, keepdim=True) * given[:, None]
    return q / q.sum()


@dataclass
class LabelIssues:
    """What confident learning found in a training split's labels. ``suspects``: example indices,
    most suspect first; ``predicted`` / ``self_confidence`` / ``confidence``: for each suspect,
    its confident class, p̂ of its given label and p̂ of that class."""

    size: int
    num_classes: int
    suspects: list[int]
    given: list[int]
    predicted: list[int]
    self_confidence: list[float]
    confidence: list[float]
    off_diagonal: list[bool]
    thresholds: list[float]
    counts: list[list[int]]
    noise_rate: float
    folds: int = FOLDS
    epochs: int | None = None
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suspect_fraction(self) -> float:
        return len(self.suspects) / self.size if self.size else 0.0

    @property
    def median_confidence(self) -> float:
        """The median over the suspects of p̂ of their predicted class (NaN without suspects)."""
        return float(torch.tensor(self.confidence, dtype=torch.float64).median()) if self.confidence else math.nan

    def joint(self) -> list[list[int]] | None:
        """The confident joint's counts, None past :data:`MAX_JOINT_CLASSES` classes (C^2 numbers)."""
        return self.counts if self.num_classes <= MAX_JOINT_CLASSES else None

    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The suspects as ``{"index", "given", "predicted", "confidence", "self_confidence"}``, ranked."""
        rows = []
        for rank in range(len(self.suspects) if limit is None else min(limit, len(self.suspects))):
            row: dict[str, Any] = {"index": self.suspects[rank], "given": self.given[rank],
                                   "predicted": self.predicted[rank], "confidence": round(self.confidence[rank], 6),
                                   "self_confidence": round(self.self_confidence[rank], 6),
                                   "off_diagonal": self.off_diagonal[rank]}
            if self.class_names is not None:
                row.update(given_name=self.class_names[row["given"]], predicted_name=self.class_names[row["predicted"]])
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        """label_issues.json: the method, its numbers and every suspect, most suspect first."""
        return {"method": "confident learning (Northcutt et al. 2021): cross-validated probabilities, per-class "
                          "thresholds, the confident joint calibrated to estimate the noise rate; that many examples "
                          "with the lowest normalized margin, most suspect first",
                "folds": self.folds, "epochs": self.epochs, "size": self.size, "classes": self.num_classes,
                "thresholds": [round(t, 6) for t in self.thresholds], "confident_joint": self.joint(),
                "estimated_noise_rate": self.noise_rate, "suspects_total": len(self.suspects),
                "suspect_fraction": self.suspect_fraction, "median_confidence": self.median_confidence,
                "clean_bar": CLEAN_NOISE_RATE, "warn_bar": WARN_NOISE_RATE, "witness_bar": WITNESS_CONFIDENCE,
                "suspects": self.records(), "reference": REFERENCE, **self.extra}


def normalized_margin(probs: Tensor, labels: Tensor) -> Tensor:
    """p̂ of the given label minus the largest p̂ of another class, (N,) float64 in [-1, 1]: negative
    where the model prefers another class (cleanlab's ``rank.get_normalized_margin_for_each_label`` is
    (this + 1) / 2, the same order).

    Example
    -------
    >>> import torch
    >>> [round(m, 6) for m in normalized_margin(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]),
    ...                                         torch.tensor([0, 2])).tolist()]
    [0.5, -0.5]
    """
    probs, labels = probs.double().cpu(), labels.long().cpu()
    rows = torch.arange(len(labels))
    others = probs.clone()
    others[rows, labels] = -math.inf
    return probs[rows, labels] - others.max(1).values


def find_label_issues(probs: Tensor, labels: Tensor, num_classes: int | None = None, *,
                      class_names: Sequence[str] | None = None) -> LabelIssues:
    """Confident learning's suspects in ``labels`` (N,) given out-of-sample ``probs`` (N, C).

    How many: the estimated number of wrong labels, round(N (1 - trace Q̂)) from the calibrated
    confident joint (:func:`calibrated_joint`; cleanlab's ``count.num_label_issues(...,
    estimation_method="off_diagonal_calibrated")``, which its documentation offers as the cut-off
    for a ranking). Which: the examples with the lowest :func:`normalized_margin` (the score of
    Northcutt et al.'s prune-by-noise-rate, taken over all off-diagonal cells at once), among those
    whose largest p̂ is not the given label (a tie goes to the label, as cleanlab's ``_reduce_issues``).
    The off-diagonal examples of the confident joint come first by construction (their margin is
    the most negative), and each suspect says whether it is one (``off_diagonal``).

    Measured against ``cleanlab.filter.find_label_issues`` (default ``prune_by_noise_rate``, which cuts
    each cell of the joint to its own count) on the same probabilities, digits with 10% symmetric
    noise, seeds 0-4: recall 0.93-0.98 against cleanlab's 0.85-0.92, precision within 0.02 of
    cleanlab's either way; at cleanlab's count, better in both (tests/test_label_noise.py)."""
    probs, labels = probs.double().cpu(), labels.long().cpu()
    num_classes = probs.shape[1] if num_classes is None else num_classes
    joint = confident_joint(probs, labels)
    q = calibrated_joint(joint.counts, labels, num_classes)
    noise_rate = max(0.0, 1.0 - float(q.trace()))
    rows = torch.arange(len(labels))
    bumped = probs.clone()
    bumped[rows, labels] += CONFIDENT_TOLERANCE  # a tie with the given label goes to the label (cleanlab)
    candidates = (bumped.argmax(1) != labels).nonzero().flatten()
    margin = normalized_margin(probs, labels)
    ranked = candidates[torch.argsort(margin[candidates], stable=True)]
    index = ranked[:min(round(noise_rate * len(labels)), len(ranked))]
    predicted = probs[index].argmax(1)
    off_diagonal = (joint.true[index] >= 0) & (joint.true[index] != labels[index])
    return LabelIssues(size=len(labels), num_classes=num_classes, suspects=index.tolist(),
                       given=labels[index].tolist(), predicted=predicted.tolist(),
                       self_confidence=probs[index, labels[index]].tolist(),
                       confidence=probs[index, predicted].tolist(), off_diagonal=off_diagonal.tolist(),
                       thresholds=joint.thresholds.tolist(), counts=joint.counts.tolist(), noise_rate=noise_rate,
                       class_names=list(class_names) if class_names is not None else None)


# --------------------------------------------------------------------------- the finding


def _class(issues: LabelIssues, k: int) -> str:
    name = issues.class_names[k] if issues.class_names is not None and k < len(issues.class_names) else None
    return f"{k}" + (f" ({name!r})" if name is not None and name != str(k) else "")


def label_noise_finding(issues: LabelIssues) -> Finding | None:
    """``label_noise`` from what :func:`find_label_issues` found: None while the estimated noise
    rate is within what a clean data set gives (:data:`CLEAN_NOISE_RATE`); a warning above
    :data:`WARN_NOISE_RATE` when the held-out networks are sure of the suspects
    (:data:`WITNESS_CONFIDENCE`); info otherwise.

    Example
    -------
    >>> issues = LabelIssues(size=100, num_classes=2, suspects=[3, 7], given=[0, 1], predicted=[1, 0],
    ...                      self_confidence=[0.05, 0.1], confidence=[0.95, 0.9], off_diagonal=[True, True],
    ...                      thresholds=[0.9, 0.9], counts=[[48, 1], [1, 48]], noise_rate=0.02)
    >>> label_noise_finding(issues).severity
    'info'
    """
    rate = issues.noise_rate
    if rate <= CLEAN_NOISE_RATE or not issues.suspects:
        return None
    witness = issues.median_confidence
    sure = witness >= WITNESS_CONFIDENCE
    shown = "; ".join(f"#{r['index']} labelled {_class(issues, r['given'])}, looks like {_class(issues, r['predicted'])} "
                      f"(p = {r['confidence']:.2f}, its label {r['self_confidence']:.2f})"
                      for r in issues.records(MESSAGE_SUSPECTS))
    unsure = ("" if sure else
              f" But the held-out networks are unsure of their suspects (median p of the other class {witness:.2f}, "
              f"under {WITNESS_CONFIDENCE}): much of this may be the network's own confusion between classes rather "
              "than wrong labels; a network that does better held out would tell them apart.")
    return Finding(
        "label_noise", "warning" if rate > WARN_NOISE_RATE and sure else "info",
        f"Confident learning estimates {rate:.1%} of the {issues.size} training labels wrong (a clean set gives up to "
        f"{CLEAN_NOISE_RATE:.0%}): {len(issues.suspects)} examples ({issues.suspect_fraction:.1%}) that networks "
        f"trained without them ({issues.folds}-fold cross-validation, {issues.epochs} epochs each) put in another class "
        f"(median p {witness:.2f}). Most suspect: {shown}.{unsure}",
        f"Look at the suspects in {LABEL_ISSUES_FILE} (most suspect first; the report shows the top "
        f"{SHOWN_SUSPECTS} with their given and predicted labels); relabel the wrong ones, or drop them, and train "
        f"again. Not every suspect is wrong: some are hard or ambiguous examples (Northcutt, Athalye & Mueller 2021, "
        f"arXiv 2103.14749, confirmed 51% of confident learning's candidates by hand), so look before you drop. "
        f"Wrong labels cap what a network can learn and make a test score misleading; from {WARN_NOISE_RATE:.0%} they "
        f"changed which models won in that study. Under {WARN_NOISE_RATE:.0%}, or without sure witnesses, this is "
        "info, not a warning.",
        {"estimated_noise_rate": rate, "suspects_total": len(issues.suspects), "suspect_fraction": issues.suspect_fraction,
         "median_confidence": witness, "clean_bar": CLEAN_NOISE_RATE, "warn_bar": WARN_NOISE_RATE,
         "witness_bar": WITNESS_CONFIDENCE, "folds": issues.folds, "epochs": issues.epochs,
         "confident_joint": issues.joint(), "suspects": issues.records(EVIDENCE_SUSPECTS), "file": LABEL_ISSUES_FILE,
         "reference": REFERENCE})


def label_noise_refusal(spec: Experiment, splits: Splits, folds: int = FOLDS) -> str | None:
    """Why ``checks.label_noise`` cannot judge this run's labels, or None when it can."""
    if splits.task != "classification" or splits.num_classes is None:
        return "its task has no classes (a regression, or an autoencoder's reconstruction)"
    if splits.train.y.dim() != 1:
        return "its targets are one class per position (a sequence model), not one label per example"
    outputs = losses.output_dim(spec.loss, splits.task, splits.num_classes, splits.target_dim)
    if class_logits(torch.zeros(1, outputs), spec.loss) is None:
        return f"loss {spec.loss} gives no class probabilities (cross_entropy, nll and bce do)"
    counts = torch.bincount(splits.train.y.long().cpu(), minlength=splits.num_classes)
    few = [(k, int(n)) for k, n in enumerate(counts.tolist()) if 0 < n < folds]
    if few:
        k, n = few[0]
        return (f"class {k} has {n} training example(s), fewer than the {folds} cross-validation folds"
                + (f" ({len(few)} classes do)" if len(few) > 1 else ""))
    return None


def label_noise_findings(spec: Experiment, splits: Splits, run_dir: str | Path | None, *, family: Builds,
                         epochs: int | None = None, folds: int = FOLDS,
                         display: Callable[[Tensor], Tensor] | None = None) -> list[Finding]:
    """The ``checks.label_noise`` check of a finished run: cross-validated probabilities, confident
    learning, ``label_issues.json`` / ``.npz`` in ``run_dir`` (None: nothing written) and the
    ``label_noise`` finding; an info instead, with no fit, where the run's data or loss rules it out
    (:func:`label_noise_refusal`). ``display`` undoes the preprocessing for the report's images."""
    why = label_noise_refusal(spec, splits, folds)
    if why is not None:
        return [Finding("label_noise", "info", f"checks.label_noise was skipped: {why}.",
                        "Turn checks.label_noise off for this run; confident learning needs one class label per "
                        f"example, a loss that gives class probabilities and at least {folds} examples of each class.",
                        {"skipped": why, "folds": folds})]
    epochs = spec.train.epochs if epochs is None else max(1, min(int(epochs), spec.train.epochs))
    started = time.perf_counter()
    probs = cross_validated_probabilities(spec, splits, folds, epochs, family=family)
    seconds = time.perf_counter() - started
    if not bool(torch.isfinite(probs).all()):
        return [Finding("label_noise", "info", "checks.label_noise was skipped: a cross-validation fit diverged "
                        "(non-finite probabilities).", "Fix the run's divergence first (see the other findings).",
                        {"skipped": "non-finite probabilities", "folds": folds, "epochs": epochs})]
    issues = find_label_issues(probs, splits.train.y, splits.num_classes, class_names=splits.class_names)
    issues.folds, issues.epochs = folds, epochs
    issues.extra["fit_seconds"] = round(seconds, 3)  # the K fits' cost, for the user to weigh
    if run_dir is not None:
        write_label_issues(run_dir, issues, splits, display)
    found = label_noise_finding(issues)
    return [found] if found is not None else []


def write_label_issues(run_dir: str | Path, issues: LabelIssues, splits: Splits,
                       display: Callable[[Tensor], Tensor] | None = None) -> None:
    """``label_issues.json`` (every suspect) and, when there are suspects, ``label_issues.npz``: the
    top :data:`SHOWN_SUSPECTS` examples ``x`` (k, *input_shape), in the data's units when
    ``display`` undoes the preprocessing, for the report's figure."""
    run_dir = Path(run_dir)
    write_json(run_dir / LABEL_ISSUES_FILE, issues.to_json())
    shown = issues.suspects[:SHOWN_SUSPECTS]
    if not shown:
        return
    show = display or (lambda t: t)
    x = splits.train.x[torch.tensor(shown, device=splits.train.x.device)]
    save_npz(run_dir / LABEL_ISSUES_EXAMPLES_FILE, x=show(x).detach().float().cpu().numpy())


__all__ = ["CLEAN_NOISE_RATE", "FOLDS", "LABEL_ISSUES_EXAMPLES_FILE", "LABEL_ISSUES_FILE", "WARN_NOISE_RATE",
           "WITNESS_CONFIDENCE", "normalized_margin",
           "ConfidentJoint", "LabelIssues", "calibrated_joint", "confident_joint", "confident_thresholds",
           "cross_validated_probabilities", "find_label_issues", "label_noise_finding", "label_noise_findings",
           "label_noise_refusal", "predicted_probabilities", "stratified_folds", "write_label_issues"]
