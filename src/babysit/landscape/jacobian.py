"""Singular values of the input-output Jacobian and of each weight matrix.

Dynamical isometry (Saxe, McClelland & Ganguli 2014; Pennington, Schoenholz & Ganguli,
"Resurrecting the sigmoid in deep learning through dynamical isometry", 2017): a deep
network passes signals and gradients without shrinking or blowing them up when the
singular values of its input-output Jacobian dJ = d f(x) / d x stay near 1. Their
spread, at init and at the end of training, says whether an initialisation keeps a deep
net trainable. The weights' own singular values (each weight reshaped to (out, -1))
show the same layer by layer.

Example
-------
>>> import torch
>>> from torch import nn
>>> layer = nn.Linear(3, 3, bias=False)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(torch.diag(torch.tensor([2.0, 1.0, 0.5])))
>>> jacobian_singular_values(layer, torch.randn(4, 3)).values[0].tolist()
[2.0, 1.0, 0.5]
>>> weight_singular_values(layer)["weight"].tolist()
[2.0, 1.0, 0.5]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from babysit.landscape.hvp import frozen_eval

__all__ = ["JacobianSpectrum", "jacobian_singular_values", "weight_singular_values"]


@dataclass
class JacobianSpectrum:
    """``values`` (examples, min(out, in)): the singular values of d f(x_i) / d x_i per
    example, descending; summaries over all of them."""

    values: Tensor

    @property
    def mean_squared(self) -> float:
        """E[sigma^2]: 1 for a network at isometry on average (Pennington et al. 2017)."""
        return float((self.values**2).mean())

    def to_dict(self) -> dict[str, Any]:
        v = self.values
        return {
            "examples": len(v),
            "max": float(v.max()),
            "min": float(v.min()),
            "mean": float(v.mean()),
            "mean_squared": self.mean_squared,
        }


def jacobian_singular_values(model: nn.Module, x: Tensor, samples: int = 32) -> JacobianSpectrum:
    """Singular values of the input-output Jacobian at the first ``samples`` rows of ``x``.

    The model runs in eval mode on copies of its state, one example at a time (so
    BatchNorm uses its running statistics and the Jacobian is that of one example's
    output with respect to its own input); inputs and outputs are flattened per example.
    """
    state = {n: t.detach().clone() for n, t in model.state_dict(keep_vars=True).items()}
    rows = []
    with frozen_eval(model):
        for xi in x[:samples]:

            def f(inp: Tensor) -> Tensor:
                return functional_call(model, state, (inp.unsqueeze(0),)).reshape(-1)

            jac = torch.autograd.functional.jacobian(f, xi.detach())  # (out, *in)
            rows.append(torch.linalg.svdvals(jac.reshape(jac.shape[0], -1)))
    return JacobianSpectrum(torch.stack(rows))


def weight_singular_values(model: nn.Module) -> dict[str, Tensor]:
    """``{parameter name: singular values}`` for every parameter with two or more
    dimensions, reshaped to (out, -1) (a conv kernel: out channels x fan-in)."""
    return {
        name: torch.linalg.svdvals(p.detach().reshape(p.shape[0], -1))
        for name, p in model.named_parameters()
        if p.dim() >= 2
    }
