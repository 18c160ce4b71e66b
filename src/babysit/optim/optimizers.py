"""Spec -> torch optimizer, with weight decay only where it belongs.

Apart from two of babysit's own (below), every optimizer here is torch's own
(``torch.optim``); this file only maps names to constructors and splits the parameters
into groups:

- ``sgd``: ``SGD`` with ``optimizer.momentum`` as given (0 is plain gradient descent).
- ``momentum``: heavy-ball momentum (Polyak 1964), ``SGD(momentum=m)``.
- ``nesterov``: Nesterov accelerated gradient in the Sutskever et al. (2013) form,
  ``SGD(momentum=m, nesterov=True)``.
- ``adam``: Kingma & Ba (2015); weight decay is an L2 term added to the gradient.
- ``adamw``: Loshchilov & Hutter (2019), weight decay decoupled from the adaptive step.
- ``rmsprop``: Tieleman & Hinton (2012), plain (no momentum).
- ``adagrad``: Duchi et al. (2011).
- ``lbfgs``: ``LBFGS`` with a strong-Wolfe line search; the loop calls ``step(closure)``.

Two are babysit's own, for the small models the classic papers trained:

- ``newton``: :class:`~babysit.optim.newton.Newton`, damped Newton with an exact Hessian and
  Levenberg-Marquardt damping (``optimizer.damping``); at most 5,000 parameters.
- ``quickprop``: :class:`~babysit.optim.quickprop.Quickprop` (Fahlman 1988), the per-weight
  parabola step with growth factor ``optimizer.max_growth``.
- ``perceptron``: Rosenblatt's rule, which is plain ``SGD(lr, momentum=0)`` on the perceptron
  criterion (``loss: perceptron``); see :mod:`babysit.optim.perceptron`.

Weight decay (an L2 penalty) applies to weight matrices and kernels only. Biases, norm-layer
scales and shifts, PReLU slopes and weight-norm magnitudes are left alone: decaying them does
not limit the network's capacity, it only shifts or shrinks units (the grouping nanoGPT and
most modern recipes use).

Speed: the fused (one kernel for all parameters) implementation is used where torch has it
(SGD, Adam, AdamW, Adagrad on CPU and CUDA); otherwise the multi-tensor ``foreach`` one. On
CPU, for a 40-100-100-10 MLP, fused steps took 0.3-0.45x the time of the default per-tensor
loop (torch 2.13, 2 threads; SGD 24 vs 53 us, Adam 42 vs 129 us).

Example
-------
>>> import torch
>>> from babysit.config import OptimizerSpec
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> opt = build_optimizer(OptimizerSpec(name="adamw", lr=1e-3, weight_decay=0.01), model)
>>> [len(g["params"]) for g in opt.param_groups], [g["weight_decay"] for g in opt.param_groups]
([2, 2], [0.01, 0.0])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from babysit.config import OptimizerSpec
from babysit.errors import BabysitError
from babysit.optim.newton import Newton
from babysit.optim.perceptron import build_perceptron_optimizer
from babysit.optim.quickprop import Quickprop

AVAILABLE = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs", "newton", "quickprop",
             "perceptron")
NOT_YET: tuple[str, ...] = ()

# Layers whose parameters only scale or shift activations; never decayed.
NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    nn.PReLU,
)


def _is_weight_norm_magnitude(module: nn.Module, name: str) -> bool:
    """``g`` of a weight-norm layer, ``w = g * v / ||v||`` (Salimans & Kingma 2016).

    ``parametrizations.weight_norm`` stores it as ``original0`` of a ParametrizationList
    holding a ``_WeightNorm``; the deprecated ``nn.utils.weight_norm`` as ``<name>_g``.
    """
    if isinstance(module, parametrize.ParametrizationList):
        return name == "original0" and type(module[0]).__name__ == "_WeightNorm"
    return name.endswith("_g") and hasattr(module, name[:-2] + "_v")


def weight_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable ``(name, parameter)`` pairs that weight decay, L1 and max-norm act on.

    A weight matrix or kernel (``ndim >= 2``) that is not a norm-layer/PReLU parameter nor a
    weight-norm magnitude. Shared (tied) parameters are listed once.

    Example
    -------
    >>> [name for name, _ in weight_matrices(torch.nn.Linear(3, 2))]
    ['weight']
    """
    return parameter_split(model)[0]


def parameter_split(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Trainable ``(name, parameter)`` pairs split into (weight matrices, everything else)."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            is_matrix = (
                param.ndim >= 2
                and not isinstance(module, NORM_LAYERS)
                and not _is_weight_norm_magnitude(module, name)
            )
            (decay if is_matrix else no_decay).append((full, param))
    return decay, no_decay


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight matrices with ``weight_decay``, the rest with none
    (one group of everything when ``weight_decay`` is 0).

    Each group carries ``param_names`` (torch keeps it in ``optimizer.param_groups``), so
    monitors and tests can tell which parameter is which. Empty groups are left out.

    Example
    -------
    >>> groups = parameter_groups(torch.nn.Linear(3, 2), weight_decay=1e-4)
    >>> [(g["param_names"], g["weight_decay"]) for g in groups]
    [(['weight'], 0.0001), (['bias'], 0.0)]
    """
    if weight_decay == 0:
        # one group: every fused/foreach kernel launch is per group, and on small models a
        # second group costs about 6% of a step (benchmarks/loop_overhead.py)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [{"params": [p for _, p in named], "param_names": [n for n, _ in named], "weight_decay": 0.0}] if named else []
    decay, no_decay = parameter_split(model)
    groups = []
    for pairs, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if pairs:
            groups.append({
                "params": [p for _, p in pairs],
                "param_names": [n for n, _ in pairs],
                "weight_decay": wd,
            })
    return groups


def _fused_supported(groups: list[dict[str, Any]]) -> bool:
    """Whether torch has fused kernels for every parameter's device and dtype.

    torch checks this only at the first ``step`` (and raises there), so it is checked here,
    with torch's own list of devices.
    """
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # private helper; keep to the devices fused has long covered
        devices = {"cpu", "cuda"}
    return all(
        p.device.type in devices and torch.is_floating_point(p) for g in groups for p in g["params"]
    )


def _with_fast_kernels(make: Any, groups: list[dict[str, Any]], fused: bool, **kwargs: Any) -> torch.optim.Optimizer:
    """Construct with ``fused=True`` when torch has a fused kernel for these params, else ``foreach``.

    Should the constructor still refuse an option, fall back to foreach, then to the plain loop.
    """
    fused = fused and _fused_supported(groups)
    attempts = ([{"fused": True}] if fused else []) + [{"foreach": True}, {}]
    for extra in attempts:
        try:
            # fresh dicts each try: torch fills the defaults (fused=...) into the groups it is given
            return make([dict(g) for g in groups], **kwargs, **extra)
        except (RuntimeError, ValueError, TypeError):
            if not extra:
                raise
    raise AssertionError("unreachable")


def build_optimizer(spec: OptimizerSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The torch optimizer ``spec`` names, over ``model``'s trainable parameters.

    ``spec.grad_clip`` is not an optimizer setting; the training loop clips before ``step``.

    Example
    -------
    >>> import torch
    >>> from babysit.config import OptimizerSpec
    >>> opt = build_optimizer(OptimizerSpec(name="nesterov", lr=0.05, momentum=0.9), torch.nn.Linear(3, 1))
    >>> type(opt).__name__, opt.defaults["nesterov"], opt.defaults["momentum"]
    ('SGD', True, 0.9)
    """
    name, lr, wd = spec.name, spec.lr, spec.weight_decay
    if name in NOT_YET:
        raise BabysitError(f"optimizer.name: '{name}' is not available yet; available: {', '.join(AVAILABLE)}")
    if name in ("momentum", "nesterov") and spec.momentum <= 0:
        raise BabysitError(f"optimizer.momentum: '{name}' needs momentum > 0 (e.g. 0.9), got {spec.momentum}")
    if name == "lbfgs":
        if wd > 0:
            raise BabysitError(
                "optimizer.weight_decay: lbfgs has no weight decay in torch; use 0, or regularization.l1 / another optimizer"
            )
        # torch's LBFGS takes one parameter group; the line search makes lr a first trial step.
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.LBFGS(params, lr=lr, line_search_fn="strong_wolfe")

    groups = parameter_groups(model, wd)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if name == "newton":
        return Newton(groups, lr=lr, damping=spec.damping, module=model)
    if name == "quickprop":
        return Quickprop(groups, lr=lr, max_growth=spec.max_growth)
    if name == "perceptron":
        return build_perceptron_optimizer(groups, lr, wd)
    if name in ("sgd", "momentum", "nesterov"):
        return _with_fast_kernels(
            torch.optim.SGD, groups, fused=True, lr=lr, momentum=spec.momentum, nesterov=name == "nesterov"
        )
    if name == "adam":
        return _with_fast_kernels(torch.optim.Adam, groups, fused=True, lr=lr, betas=spec.betas, eps=spec.eps)
    if name == "adamw":
        return _with_fast_kernels(torch.optim.AdamW, groups, fused=True, lr=lr, betas=spec.betas, eps=spec.eps)
    if name == "adagrad":
        return _with_fast_kernels(torch.optim.Adagrad, groups, fused=True, lr=lr, eps=spec.eps)
    if name == "rmsprop":
        return _with_fast_kernels(torch.optim.RMSprop, groups, fused=False, lr=lr, eps=spec.eps)
    raise BabysitError(f"optimizer.name: must be one of {', '.join(AVAILABLE)}; got {name!r}")
