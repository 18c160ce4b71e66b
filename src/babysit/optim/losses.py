"""Loss functions by name, for classification and regression, and predictions from outputs.

Every loss takes the model's raw outputs ``(B, output_dim)`` (logits for classification)
and the targets as the data gives them: int64 class ids ``(B,)`` for classification, float
``(B,)`` or ``(B, k)`` for regression. Every loss is a mean over the batch.

- ``cross_entropy``: softmax cross-entropy, ``nn.CrossEntropyLoss``.
- ``nll``: ``log_softmax`` then ``nn.NLLLoss``; the same number as cross_entropy, kept as
  a separate name because textbooks (and Keras) present the two separately.
- ``mse`` / ``mae``: squared / absolute error; on class labels the outputs are compared
  with one-hot targets (the classic "regression on one-hot codes" of early neural nets).
- ``bce``: binary cross-entropy on logits. Two classes -> one logit; more classes ->
  one-vs-rest, one logit per class against the one-hot code.
- ``hinge``: the multi-class SVM loss of CS231n (Weston & Watkins 1999),
  ``L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + 1)``, mean over the batch.
- ``perceptron``: the perceptron criterion ``max(0, -y·s)`` per unit (one unit for two
  classes, one-vs-rest units for more), whose gradient is Rosenblatt's rule; see
  :mod:`babysit.optim.perceptron`.

z-loss (spec key ``loss_z``, :class:`ZLoss`) adds ``coef * mean(log Z^2)`` to a softmax loss,
``log Z`` the logsumexp of each prediction's logits (PaLM, Chowdhery et al. 2022, coefficient
1e-4); only cross_entropy and nll have a softmax (:data:`Z_LOSS_LOSSES`).

Element-wise losses (mse, mae, bce) average over every element, as torch's ``reduction='mean'``
and Keras do, so a ``(B, C)`` one-hot comparison is divided by ``B * C``.

Example
-------
>>> import torch
>>> loss = build_loss("cross_entropy", "classification", num_classes=3)
>>> round(loss(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item(), 4)  # ln 3
1.0986
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babysit.errors import BabysitError
from babysit.optim.perceptron import PerceptronCriterion

LOSSES = ("mse", "mae", "cross_entropy", "nll", "bce", "hinge", "perceptron")
CLASSIFICATION_ONLY = ("cross_entropy", "nll", "bce", "hinge", "perceptron")
Z_LOSS_LOSSES = ("cross_entropy", "nll")  # the losses with a softmax, whose log Z z-loss penalises
WEIGHTED_LOSSES = ("cross_entropy", "nll")  # the losses ``loss_weights: balanced`` weights by class
SINGLE_UNIT_BINARY = ("bce", "perceptron")  # two classes -> one output unit, predicted by its sign
TASKS = ("classification", "regression")


class NLLFromLogits(nn.Module):
    """``log_softmax`` then ``nn.NLLLoss``: takes the same logits as cross-entropy (``weight``: per class)."""

    def __init__(self, weight: Tensor | None = None) -> None:
        super().__init__()
        self.nll = nn.NLLLoss(weight=weight)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.nll(F.log_softmax(outputs, dim=-1), targets)


class MulticlassHinge(nn.Module):
    """The CS231n multi-class SVM loss: ``sum_{j != y} max(0, s_j - s_y + 1)``, batch mean.

    ``nn.MultiMarginLoss`` computes the same sum divided by the number of classes, so it is
    scaled back by ``C``; the initial loss of a small-weight network is then ``C - 1``, the
    sanity check CS231n gives.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.margin = nn.MultiMarginLoss(margin=1.0)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.margin(outputs, targets) * self.num_classes


class OneHotRegression(nn.Module):
    """mse / mae on class labels: compare raw outputs ``(B, C)`` with one-hot targets ``(B, C)``."""

    def __init__(self, error: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.error = error
        self.num_classes = num_classes

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        one_hot = F.one_hot(targets, self.num_classes).to(outputs.dtype)  # (B,) -> (B, C)
        return self.error(outputs, one_hot)


class Regression(nn.Module):
    """mse / mae on continuous targets; a ``(B, 1)`` output meets a ``(B,)`` target without broadcasting to ``(B, B)``."""

    def __init__(self, error: nn.Module) -> None:
        super().__init__()
        self.error = error

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1:
            outputs = outputs.squeeze(-1)  # (B, 1) -> (B,)
        if outputs.shape != targets.shape:
            raise ValueError(f"regression loss: outputs {tuple(outputs.shape)} do not match targets {tuple(targets.shape)}")
        return self.error(outputs, targets.to(outputs.dtype))


class BinaryBCE(nn.Module):
    """Two classes, one logit: ``BCEWithLogits(outputs (B, 1) -> (B,), labels 0/1 as float)``."""

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.bce(outputs.squeeze(-1), targets.to(outputs.dtype))


class OneVsRestBCE(nn.Module):
    """More than two classes: one independent logistic unit per class against the one-hot code."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.bce(outputs, F.one_hot(targets, self.num_classes).to(outputs.dtype))


class PerToken(nn.Module):
    """A classification loss at every position of a sequence: outputs (B, T, C) and targets
    (B, T) are flattened to (B*T, C) and (B*T,), so the loss is the mean over all B*T
    predictions (a language model's per-token loss; ln C at chance for C tokens)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))  # (B, T, C) -> (B*T, C)


class ZLoss(nn.Module):
    """A softmax loss plus z-loss: ``loss(outputs, targets) + coef * mean(logsumexp(outputs)^2)``.

    The softmax is shift-invariant, so nothing in cross-entropy keeps the logits' log
    normaliser ``log Z = logsumexp_j s_j`` from drifting; when it drifts far from 0, low-precision
    logits lose resolution and training diverges (PaLM, Chowdhery et al. 2022, arXiv 2204.02311,
    section 5: "z_loss = 1e-4 * log^2 Z"; Wortsman et al. 2023, arXiv 2309.14322, section 3.2:
    output logit divergence). The mean runs over every prediction: the batch, and the positions
    of a sequence's ``(B, T, V)`` outputs. The term is part of the loss the run reports, train and
    held out alike (1e-4 * ln(V)^2 at a GPT's initialisation: 0.0017 nats for 65 characters).

    Example
    -------
    >>> import math, torch
    >>> loss = ZLoss(nn.CrossEntropyLoss(), 1e-4)
    >>> round(loss(torch.zeros(2, 4), torch.tensor([0, 1])).item() - math.log(4), 6)  # 1e-4 (ln 4)^2
    0.000192
    """

    def __init__(self, loss: nn.Module, coef: float) -> None:
        super().__init__()
        self.loss = loss
        self.coef = coef

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        log_z = outputs.float().logsumexp(-1)  # (B,) or (B, T): fp32 under autocast
        return self.loss(outputs, targets) + self.coef * log_z.square().mean()


def check_z_loss(name: str, coef: float) -> None:
    """Refuse z-loss (``loss_z`` > 0) on a loss without a softmax over logits, in one line.

    Example
    -------
    >>> check_z_loss("cross_entropy", 1e-4)
    >>> check_z_loss("mse", 1e-4)
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: loss_z: z-loss penalises the log normaliser of a softmax over logits, and loss: mse has none; use loss: cross_entropy or nll, or loss_z: 0
    """
    if coef and name not in Z_LOSS_LOSSES:
        raise BabysitError(f"loss_z: z-loss penalises the log normaliser of a softmax over logits, and "
                           f"loss: {name} has none; use loss: cross_entropy or nll, or loss_z: 0")


def _check(name: str, task: str, num_classes: int | None) -> None:
    if name not in LOSSES:
        raise BabysitError(f"loss: must be one of {', '.join(LOSSES)}; got {name!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "regression" and name in CLASSIFICATION_ONLY:
        raise BabysitError(
            f"loss: '{name}' needs class labels, but the data's targets are continuous; use mse or mae"
        )
    if task == "classification" and (num_classes is None or num_classes < 2):
        raise ValueError(f"classification needs num_classes >= 2, got {num_classes}")


def balanced_class_weights(targets: Tensor, num_classes: int) -> Tensor:
    """Class weights ``N / (C * n_c)`` from the training targets (``loss_weights: balanced``): ``n_c``
    examples of class c among ``N``, ``C`` the classes present. Every class then carries the same
    total weight ``N / C``, and the weights average 1 over the training examples (scikit-learn's
    ``class_weight="balanced"``; King & Zeng 2001, "Logistic Regression in Rare Events Data").
    A class absent from the training targets gets weight 0 (it has no example to weight).
    float32, on the targets' device.

    Example
    -------
    >>> import torch
    >>> balanced_class_weights(torch.tensor([0, 0, 0, 1]), 3).tolist()  # 4 / (2 * 3), 4 / (2 * 1), absent
    [0.6666666865348816, 2.0, 0.0]
    """
    counts = torch.bincount(targets.reshape(-1).long(), minlength=num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, counts.sum() / (max(present, 1) * counts.clamp_min(1.0)), 0.0)
    return weights.float()


def check_loss_weights(name: str, task: str, loss_weights: str) -> None:
    """Refuse class weights (``loss_weights: balanced``) where there are no classes to weight or the
    loss takes no weights, in one line.

    Example
    -------
    >>> check_loss_weights("cross_entropy", "classification", "balanced")
    >>> check_loss_weights("mse", "regression", "balanced")
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: loss_weights: balanced weights classes, and loss: mse on continuous targets has none; use loss_weights: none
    """
    if loss_weights == "none":
        return
    if task != "classification":
        raise BabysitError(f"loss_weights: {loss_weights} weights classes, and loss: {name} on continuous targets has "
                           "none; use loss_weights: none")
    if name not in WEIGHTED_LOSSES:
        raise BabysitError(f"loss_weights: {loss_weights} weights the classes of a softmax loss, and loss: {name} is "
                           f"not one; use loss: {' or '.join(WEIGHTED_LOSSES)}, or loss_weights: none")


def build_loss(name: str, task: str, num_classes: int | None, per_token: bool = False,
               class_weights: Tensor | None = None) -> nn.Module:
    """The loss module for ``name`` on a ``task`` ('classification' or 'regression').

    The module is called as ``loss(outputs, targets)`` with raw outputs ``(B, output_dim)``
    (see :func:`output_dim`) and the data's targets, and returns the batch mean. With
    ``per_token`` the outputs are ``(B, T, output_dim)`` and the targets ``(B, T)`` class ids
    (next-token prediction): :class:`PerToken`. ``class_weights`` (C,) weight cross_entropy /
    nll per class (:func:`balanced_class_weights`): torch's weighted mean,
    ``sum_i w[y_i] l_i / sum_i w[y_i]`` over the batch.

    Example
    -------
    >>> import torch
    >>> hinge = build_loss("hinge", "classification", num_classes=3)
    >>> hinge(torch.zeros(2, 3), torch.tensor([0, 2])).item()  # CS231n: C - 1 at zero scores
    2.0
    """
    _check(name, task, num_classes)
    if class_weights is not None:
        check_loss_weights(name, task, "balanced")
    if task == "regression":
        return Regression(nn.MSELoss() if name == "mse" else nn.L1Loss())
    assert num_classes is not None
    if per_token:  # sequence targets (B, T): the same loss at every position
        return PerToken(build_loss(name, task, num_classes, class_weights=class_weights))
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=class_weights)
    if name == "nll":
        return NLLFromLogits(class_weights)
    if name == "hinge":
        return MulticlassHinge(num_classes)
    if name == "perceptron":
        return PerceptronCriterion()
    if name == "bce":
        return BinaryBCE() if num_classes == 2 else OneVsRestBCE(num_classes)
    return OneHotRegression(nn.MSELoss() if name == "mse" else nn.L1Loss(), num_classes)


def output_dim(name: str, task: str, num_classes: int | None, target_dim: int) -> int:
    """How many outputs the network needs for this loss: the classes, one logit for binary bce, or the targets.

    Example
    -------
    >>> output_dim("bce", "classification", 2, 1), output_dim("cross_entropy", "classification", 10, 1)
    (1, 10)
    >>> output_dim("mse", "regression", None, 3)
    3
    """
    _check(name, task, num_classes)
    if task == "regression":
        return target_dim
    assert num_classes is not None
    return 1 if name in SINGLE_UNIT_BINARY and num_classes == 2 else num_classes


def predict(outputs: Tensor, name: str) -> Tensor:
    """Class ids ``(B,)`` from raw outputs: the sign of a single bce logit (or perceptron
    score), else the argmax.

    Example
    -------
    >>> import torch
    >>> predict(torch.tensor([[0.3], [-2.0]]), "bce").tolist()
    [1, 0]
    >>> predict(torch.tensor([[0.1, 0.7, 0.2]]), "cross_entropy").tolist()
    [1]
    """
    if name in SINGLE_UNIT_BINARY and outputs.shape[-1] == 1:
        return (outputs.squeeze(-1) > 0).long()
    return outputs.argmax(-1)


def chance_loss(name: str, task: str, num_classes: int | None, targets: Tensor, *,
                balanced: bool = False) -> float | None:
    """The loss of the best constant prediction, one that ignores the input: what a network
    that learned nothing scores, the yardstick for "is it learning at all".

    Cross-entropy / NLL: the entropy of the class frequencies (ln C when balanced); with
    ``balanced`` class weights (:func:`balanced_class_weights`) every present class counts
    1/C, so the best constant is uniform over them and scores ln C. BCE: the
    mean binary entropy of each class's frequency. MSE: the targets' variance (predict the
    mean). MAE: the mean absolute deviation from the median. Hinge: C - 1 (all scores equal).
    Perceptron: None, since the constant score 0 has criterion 0 (its scale is the weights').
    On class labels, mse / mae compare with the one-hot code.

    Example
    -------
    >>> import torch
    >>> round(chance_loss("cross_entropy", "classification", 4, torch.tensor([0, 1, 2, 3])), 4)  # ln 4
    1.3863
    >>> chance_loss("mse", "regression", None, torch.tensor([1.0, 3.0]))
    1.0
    """
    import torch

    if task == "classification":
        classes = int(num_classes or int(targets.max()) + 1)
        p = torch.bincount(targets.long().flatten().cpu(), minlength=classes).double()
        p = p / p.sum().clamp_min(1)
        nz = p[p > 0]
        if name in ("cross_entropy", "nll"):
            return math.log(len(nz)) if balanced else float(-(nz * nz.log()).sum())
        if name == "hinge":
            return float(classes - 1)
        q = p[1:] if classes == 2 else p  # two classes: one logit for class 1
        if name == "bce":
            q = q.clamp(1e-12, 1 - 1e-12)
            return float((-(q * q.log() + (1 - q) * (1 - q).log())).mean())
        if name == "mse":
            return float((p * (1 - p)).mean())
        if name == "mae":
            return float(torch.minimum(p, 1 - p).mean())
        return None
    y = targets.double().cpu()
    if y.dim() == 1:
        y = y[:, None]
    if name == "mse":
        return float(y.var(dim=0, unbiased=False).mean())
    if name == "mae":
        return float((y - y.median(dim=0).values).abs().mean())
    return None


__all__ = ["LOSSES", "WEIGHTED_LOSSES", "Z_LOSS_LOSSES", "PerToken", "ZLoss", "balanced_class_weights", "build_loss",
           "chance_loss", "check_loss_weights", "check_z_loss", "output_dim", "predict"]
