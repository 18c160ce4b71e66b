"""Regularizers torch does not ship as one call: L1, max-norm, activity penalty, input noise.

- L1 on the weights (Tibshirani 1996 for the lasso; Ng 2004 for feature selection in
  networks): ``sum |w|`` over weight matrices and kernels, added to the loss.
- Max-norm (Srivastava et al. 2014, "Dropout", section 5.1): after each step, each unit's
  incoming weight vector is rescaled to norm <= c; bounds the weights without shrinking the
  ones already inside the ball.
- Activity regularization (Keras' ``activity_regularizer``; Glorot et al. 2011 used an L1
  form for sparse ReLUs): ``coefficient * mean(a ** 2)`` per hidden layer, added to the loss.
- Gaussian input noise (Bishop 1995: training with noise is Tikhonov regularization).

Weight decay (L2 on the weights) is the optimizer's ``weight_decay``; see ``optimizers.py``.

Example
-------
>>> from collections.abc import Callable

import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
>>> activity = ActivityRegularizer([model[1]], coefficient=1e-3)
>>> x = add_input_noise(torch.randn(8, 3), std=0.1)
>>> loss = model(x).pow(2).mean() + 1e-4 * l1_penalty(model) + activity.penalty()
>>> loss.backward()
>>> apply_max_norm(model, max_norm=3.0)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from babysit.optim.optimizers import weight_matrices


def l1_penalty(model: nn.Module) -> Tensor:
    """``sum |w|`` over the weight matrices and kernels (not biases, norm scales, weight-norm magnitudes).

    Example
    -------
    >>> import torch
    >>> layer = torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
    >>> l1_penalty(layer).item()
    3.0
    """
    weights = [p for _, p in weight_matrices(model)]
    if not weights:
        first = next(model.parameters(), None)
        return torch.zeros((), device=first.device if first is not None else None)
    return torch.stack([w.abs().sum() for w in weights]).sum()


def _unit_dim(module: nn.Module) -> int | None:
    """The weight dimension indexing output units: rows of a Linear, output channels of a conv."""
    if isinstance(module, nn.Linear):
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        # ConvTranspose stores (in, out / groups, *k); for groups > 1 a unit's incoming
        # weights are spread over several slices, so only groups == 1 is handled.
        if module.transposed:
            return 1 if module.groups == 1 else None
        return 0
    return None


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Max-norm constraint (Srivastava et al. 2014): rescale each unit's incoming weights to norm <= ``max_norm``.

    In place, on every Linear and convolution (a Linear's rows, a conv's output-channel
    kernels); vectors already inside the ball are left exactly as they are (``torch.renorm``).
    Call after each optimizer step.

    Parametrized weights: with weight norm (``w = g * v / ||v||`` per output unit) a unit's
    norm is ``|g|``, so ``g`` is clamped to ``[-max_norm, max_norm]``. Spectrally normalized
    weights are skipped: every row of ``W / sigma(W)`` already has norm <= 1, and rescaling
    ``W`` cannot change ``W / sigma(W)``. Other parametrizations are skipped too.
    Transposed convolutions with ``groups > 1`` are skipped.

    Example
    -------
    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    >>> apply_max_norm(layer, 1.0)
    >>> [round(n, 4) for n in layer.weight.norm(dim=1).tolist()]  # the long row cut to 1, the short one untouched
    [1.0, 0.5]
    """
    for module in model.modules():
        dim = _unit_dim(module)
        if dim is None:
            continue
        if parametrize.is_parametrized(module, "weight"):
            chain = module.parametrizations.weight
            parametrization = type(chain[0]).__name__
            # g has one entry per output unit only when weight norm works along dim 0
            if len(chain) == 1 and parametrization == "_WeightNorm" and chain[0].dim == dim == 0:
                chain.original0.clamp_(-max_norm, max_norm)
            continue
        weight = module.weight
        weight.renorm_(p=2, dim=dim, maxnorm=max_norm)


class ActivityRegularizer:
    """L2 activity penalty on hidden activations: ``coefficient * sum_layers mean(a ** 2)``.

    Registers forward hooks on the given modules (the hidden nonlinearities) that accumulate
    the penalty during a training forward pass; :meth:`penalty` returns it and resets. Hooks
    exist only when ``coefficient > 0`` (no cost otherwise) and count only when the module is
    in training mode and autograd is recording (an evaluation or monitoring pass under
    ``torch.no_grad`` does not leak into the next training step); :meth:`remove` detaches them.

    Example
    -------
    >>> import torch
    >>> act = torch.nn.ReLU()
    >>> reg = ActivityRegularizer([act], coefficient=0.5)
    >>> _ = act(torch.tensor([1.0, -1.0, 3.0]))
    >>> round(reg.penalty().item(), 4)  # 0.5 * mean([1, 0, 9])
    1.6667
    >>> reg.remove()
    """

    def __init__(self, modules: list[nn.Module], coefficient: float) -> None:
        if coefficient < 0:
            raise ValueError(f"activity coefficient must be >= 0, got {coefficient}")
        self.coefficient = coefficient
        self._total: Tensor | float = 0.0
        self._handles = [m.register_forward_hook(self._hook) for m in modules] if coefficient > 0 else []

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if isinstance(output, tuple):  # recurrent layers return (output, state)
            output = output[0]
        self._total = self._total + self.coefficient * output.pow(2).mean()

    def penalty(self) -> Tensor | float:
        """The penalty accumulated since the last call (0.0 when nothing was hooked), then reset."""
        total, self._total = self._total, 0.0
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._total = 0.0


def add_input_noise(x: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """``x + N(0, std^2)`` noise for training; ``x`` itself when ``std == 0``.

    ``generator`` (on ``x``'s device) makes the noise reproducible.

    Example
    -------
    >>> import torch
    >>> x = torch.zeros(10000)
    >>> round(add_input_noise(x, 0.5, torch.Generator().manual_seed(0)).std().item(), 1)
    0.5
    """
    if std == 0:
        return x
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def penalty_function(l1: float, activity: float, activations: list[nn.Module]
                     ) -> tuple[Callable[[nn.Module], Tensor] | None, ActivityRegularizer | None]:
    """L1 on the weights (coefficient ``l1``) and the activity penalty on ``activations``' outputs
    (coefficient ``activity``) as one ``model -> scalar`` function, and the activity regularizer
    (its hooks live as long as it does); ``(None, None)`` when both are 0.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> penalty, activity = penalty_function(0.0, 0.0, [net[1]])
    >>> penalty is None and activity is None
    True
    """
    regularizer = ActivityRegularizer(activations, activity) if activity > 0 else None
    if not l1 and regularizer is None:
        return None, None

    def penalty(m: nn.Module) -> Tensor:
        total = torch.zeros((), device=next(m.parameters()).device)
        if l1:
            total = total + l1 * l1_penalty(m)
        if regularizer is not None:
            total = total + regularizer.penalty()
        return total

    return penalty, regularizer
