"""Rosenblatt's perceptron rule as a loss plus plain SGD, the stop at separation, Novikoff's bound.

The perceptron (Rosenblatt 1958) scores an example ``s = wᵀφ(x) + b`` and predicts
``sign(s)``. It learns by the mistake-driven rule: on an example with label ``y ∈ {-1, +1}``
that it gets wrong (``y·s <= 0``; a score of exactly 0 counts as wrong, so w = 0 learns)

    w <- w + lr · y · φ(x),    b <- b + lr · y,

and it leaves the weights alone on the examples it gets right.

That rule is exactly gradient descent on the *perceptron criterion* (Duda & Hart 1973;
Bishop 2006, "Pattern Recognition and Machine Learning", section 4.1.7)

    E(w) = Σ_{mistakes} -y·s,

whose gradient is ``-y·φ(x)`` on a mistake and 0 on a correct example. So babysit needs no
optimizer of its own: ``loss: perceptron`` is :class:`PerceptronCriterion` and
``optimizer.name: perceptron`` is ``torch.optim.SGD(lr, momentum=0)``; together they are
the rule. With ``data.batch_size: 1`` it is Rosenblatt's online rule; with larger batches
the batch perceptron (the batch mean of the updates; the mean only rescales the lr).

Classes: two classes use one unit (label 1 is +1, label 0 is -1). More classes use one
unit per class, one-vs-rest: unit c is a binary perceptron for "class c or not", and the
prediction is the class with the largest score. The criterion sums the units' criteria, so
each unit follows its own rule.

Novikoff (1962): if a unit vector ``u`` separates the examples with margin ``γ``
(``y·uᵀx̃ >= γ`` for all of them, ``x̃ = (φ(x), 1)``) and ``R = max ||x̃||``, the online rule
started at w = 0 makes at most ``(R/γ)²`` mistakes, in any order and at any learning rate
(from w = 0 the lr only scales w, never a decision). :func:`novikoff_bound` computes it.

:class:`babysit.families.perceptron.SeparationStop` counts the mistakes (updates) of each epoch on the device from the
criterion's running counter (one ``.item()`` an epoch), logs them as ``mistakes`` and stops
the run, ``stop_reason`` "separated: ...", after an epoch without a mistake: the training
data are then separated and the rule will never change the weights again.

Example
-------
>>> import torch
>>> criterion = PerceptronCriterion()
>>> scores = torch.tensor([[0.5], [-0.2], [0.0]], requires_grad=True)  # one unit, two classes
>>> loss = criterion(scores, torch.tensor([1, 1, 0]))  # right, wrong (0.2), wrong (score 0)
>>> loss.backward()
>>> round(loss.item(), 4), (3 * scores.grad).flatten().tolist() == [0, -1, 1]  # -y / B on mistakes
(0.0667, True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babysit.errors import BabysitError


def target_signs(scores: Tensor, targets: Tensor) -> Tensor:
    """The ±1 target of every unit: ``(B, 1)`` for one unit (class 1 is +1), else one-vs-rest ``(B, C)``.

    Example
    -------
    >>> target_signs(torch.zeros(2, 3), torch.tensor([2, 0])).tolist()
    [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]
    """
    if scores.shape[-1] == 1:
        return (2 * targets.to(scores.dtype) - 1).unsqueeze(-1)  # (B,) -> (B, 1)
    return 2 * F.one_hot(targets, scores.shape[-1]).to(scores.dtype) - 1  # (B,) -> (B, C)


class PerceptronCriterion(nn.Module):
    """The perceptron criterion ``Σ_units max(0, -y·s)`` with ``y·s = 0`` counted as a mistake,
    averaged over the batch; its gradient is the perceptron rule (module docstring).

    While :attr:`counting` is on (the :class:`SeparationStop` callback turns it on for the
    training loop), every call with gradients enabled adds its mistakes, the (example, unit)
    pairs with ``y·s <= 0``, to :attr:`mistakes`, a tensor on the scores' device (no sync).
    Evaluation runs without gradients and is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.mistakes: Tensor | None = None

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        margins = target_signs(scores, targets) * scores  # (B, units): y·s
        wrong = margins <= 0
        if self.counting and torch.is_grad_enabled():
            count = wrong.sum()
            self.mistakes = count if self.mistakes is None else self.mistakes + count
        # -y·s on the mistakes, 0 elsewhere: d/ds = -y exactly where the rule updates
        return torch.where(wrong, -margins, torch.zeros_like(margins)).sum(-1).mean()

    def reset(self) -> None:
        """Start a new count of mistakes."""
        self.mistakes = None


def build_perceptron_optimizer(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The perceptron rule's optimizer: ``torch.optim.SGD(lr, momentum=0)`` (it is the rule only
    together with ``loss: perceptron``; ``optimizer.momentum`` is not used).

    Example
    -------
    >>> opt = build_perceptron_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], 1.0, 0.0)
    >>> type(opt).__name__, opt.defaults["momentum"]
    ('SGD', 0)
    """
    if weight_decay > 0:
        raise BabysitError(
            f"optimizer.weight_decay: the perceptron rule has no weight decay; use 0, got {weight_decay}"
        )
    return torch.optim.SGD(groups, lr=lr, momentum=0)


def novikoff_bound(features: Tensor, signs: Tensor, weight: Tensor, bias: float | Tensor = 0.0) -> dict[str, float]:
    """Novikoff's (1962) bound ``(R/γ)²`` on the online perceptron's mistakes from w = 0.

    ``features`` (N, D) are φ(x), ``signs`` (N,) the ±1 labels, and ``(weight, bias)`` any
    separator; it is normalised as the augmented vector ``(w, b)``, to match ``x̃ = (φ(x), 1)``
    (the bias is the weight of a constant feature). ``R = max ||x̃||`` and
    ``γ = min y·(wᵀφ(x) + b) / ||(w, b)||``. A wider-margin separator (a hard-margin SVM)
    gives a tighter bound; ``bound`` is infinite when ``(w, b)`` does not separate.

    Example
    -------
    >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    >>> novikoff_bound(x, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0]))
    {'R': 1.4142135623730951, 'gamma': 1.0, 'bound': 2.0000000000000004}
    """
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)  # (N, D + 1)
    u = torch.cat([weight.double().flatten(), torch.as_tensor(bias, dtype=torch.float64).reshape(1)])
    radius = x.norm(dim=1).max().item()
    gamma = ((signs.double() * (x @ u)).min() / u.norm()).item()
    bound = (radius / gamma) ** 2 if gamma > 0 else math.inf
    return {"R": radius, "gamma": gamma, "bound": bound}


__all__ = [
    "PerceptronCriterion", "build_perceptron_optimizer", "novikoff_bound",
    "target_signs",
]  # fmt: skip
