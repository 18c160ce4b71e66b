"""Quickprop: a per-weight parabola step (Fahlman 1988).

S. E. Fahlman, "An Empirical Study of Learning Speed in Back-Propagation Networks",
CMU-CS-88-162 (1988). Each weight is treated as if the loss along it were a parabola and
the weights were independent. From the slope now, ``s(t) = dL/dw``, the slope before,
``s(t-1)``, and the last step ``Δw(t-1)``, the parabola through the two slopes has its
minimum at

    Δw(t) = Δw(t-1) · s(t) / (s(t-1) - s(t)).

The rules that make it work, as in Fahlman's own ``quickprop1.c``:

- **Growth limit**: no step is more than ``μ`` (``max_growth``, 1.75 in the paper) times
  the last one. When ``s(t)`` has the same sign as ``s(t-1)`` and is not much smaller
  (``s(t)`` beyond ``μ / (1 + μ) · s(t-1)`` on the side of the last step), the parabola
  is flat, concave or its minimum far away: the step is ``μ · Δw(t-1)``.
- **Gradient term**: while the slope still points the way of the last step, a gradient
  step ``-ε s(t)`` is added to the parabola step (ε is ``lr``); once the slope has
  changed sign the parabola alone steps back into the valley.
- **Restart**: a weight whose last step was 0 (the first step, or a step that landed
  exactly) takes a plain gradient step ``-ε s(t)``. So the first step is gradient descent.
- **Bad denominator**: where ``s(t-1) = s(t)`` exactly the growth limit applies.
- **Weight decay**: ``weight_decay · w`` is added to the slope (Fahlman's small decay term
  that keeps weights from growing without bound).

Quickprop is a full-batch method: the parabola fits two slopes of the same function, which
mini-batch noise breaks. It keeps two tensors per parameter (the last step and the last
slope), so ``state_dict`` round-trips it like any torch optimizer.

Example
-------
On ``L(w) = (w - 3)²``: a gradient step, a step held to μ times the last (plus the gradient
term), an overshoot, and then the parabola (exact here) lands on the minimum.

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(1))
>>> opt = Quickprop([w], lr=0.1)
>>> path = []
>>> for _ in range(4):
...     opt.zero_grad()
...     ((w - 3) ** 2).sum().backward()
...     _ = opt.step()
...     path.append(round(w.item(), 3))
>>> path
[0.6, 2.13, 3.174, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class Quickprop(torch.optim.Optimizer):
    """Fahlman's Quickprop (see the module docstring).

    Parameters
    ----------
    params: parameters or parameter groups.
    lr: ε, the gradient step's rate (the first step and the restarts are ``-lr * slope``).
    max_growth: μ, the largest ratio of a step to the one before (Fahlman: 1.75).
    weight_decay: added to the slope as ``weight_decay * w``.
    """

    def __init__(self, params: Any, lr: float = 0.1, max_growth: float = 1.75, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr: must be > 0, got {lr}")
        if max_growth <= 0:
            raise ValueError(f"max_growth: must be > 0, got {max_growth}")
        super().__init__(params, {"lr": lr, "max_growth": max_growth, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["max_growth"], group["weight_decay"]
            shrink = mu / (1.0 + mu)
            for p in group["params"]:
                if p.grad is None:
                    continue
                slope = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                state = self.state[p]
                if not state:
                    state["prev_step"] = torch.zeros_like(p)
                    state["prev_slope"] = torch.zeros_like(p)
                prev_step, prev_slope = state["prev_step"], state["prev_slope"]
                step = _quickprop_step(slope, prev_step, prev_slope, lr, mu, shrink)
                p.add_(step)
                prev_step.copy_(step)
                prev_slope.copy_(slope)
        return loss


def _quickprop_step(s: Tensor, d: Tensor, p: Tensor, lr: float, mu: float, shrink: float) -> Tensor:
    """Fahlman's update for slope ``s``, last step ``d`` and last slope ``p`` (elementwise).

    >>> t = torch.tensor
    >>> _quickprop_step(t([2.0]), t([0.0]), t([5.0]), 0.1, 1.75, 1.75 / 2.75)   # restart: gradient step
    tensor([-0.2000])
    >>> _quickprop_step(t([-1.0]), t([1.0]), t([-3.0]), 0.1, 1.75, 1.75 / 2.75)  # parabola + gradient term
    tensor([0.6000])
    """
    positive, negative = d > 0, d < 0
    # the gradient term: on a zero last step, or while the slope still points the last step's way
    linear = torch.where((d == 0) | (positive & (s < 0)) | (negative & (s > 0)), -lr * s, torch.zeros_like(s))
    # the growth limit: the slope has not fallen below μ/(1+μ) of the last one in the step's direction
    capped = (positive & (s <= shrink * p)) | (negative & (s >= shrink * p))
    denominator = p - s
    capped |= denominator == 0
    parabola = d * s / torch.where(denominator == 0, torch.ones_like(s), denominator)
    quadratic = torch.where(capped, mu * d, parabola)
    return linear + torch.where(d == 0, torch.zeros_like(s), quadratic)
