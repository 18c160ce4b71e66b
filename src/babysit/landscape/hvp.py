"""Hessian-vector products of a model's loss over a whole dataset, without the Hessian.

Pearlmutter, "Fast Exact Multiplication by the Hessian" (1994): ``H v`` is the gradient
of ``g(θ) . v``, so one forward and two backward passes give it exactly, at a few times
the cost of a gradient and with no D x D matrix. Here the double backward goes through
``torch.autograd.grad(..., create_graph=True)``, which works for any module autograd
can differentiate twice.

What the loss is. ``data`` is an ``(x, y)`` pair or an iterable of ``(x, y)`` batches;
``loss_fn(model(x), y)`` returns the *mean* over a batch (the torch default). The loss of
the dataset is the example-weighted mean of the batch losses, ``sum_b n_b L_b / N``, so
``H v`` is the same for every batching, a ragged last batch included (hessian-eigenthings
averages the batches unweighted: 16% off in H v on a ragged split).

What the model sees. Every computation runs with the model in eval mode (BatchNorm uses
its running statistics, dropout is off), on copies of the parameters and buffers taken
when the operator is built, through :func:`torch.func.functional_call`. The caller's
weights, buffers and ``requires_grad`` flags are never written; the training flags are
set to eval for the duration of a call and put back afterwards.

Weight norm. ``torch._weight_norm`` differentiates twice wrongly on the CPU; while H v
runs, a composite of the same function stands in for it (:func:`twice_differentiable`).

Which parameters. All parameters that require grad, by default, or the ones named in
``params``: a name is a parameter name (``"0.weight"``) or a module name (``"0"``, every
parameter below it). The flat vector θ concatenates them in ``named_parameters`` order.

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Linear(3, 1).double()
>>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
>>> op = HessianOperator(model, nn.MSELoss(), (x, y), batch_size=4)
>>> op.dim
4
>>> v = torch.ones(4, dtype=torch.float64)
>>> hv = op.matvec(v)   # the Hessian of an MSE on a linear model is 2/N [x 1]^T [x 1]
>>> xb = torch.cat([x, torch.ones(10, 1, dtype=torch.float64)], 1)
>>> torch.allclose(hv, 2 / 10 * xb.T @ (xb @ v))
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from babysit.errors import BabysitError
from babysit.nets.double_backward import twice_differentiable

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]
Data = Batch | Iterable[Batch]

__all__ = [
    "HessianOperator",
    "hessian_vector_product",
    "select_parameters",
    "frozen_eval",
    "as_batches",
    "dataset_loss",
]


# --------------------------------------------------------------------------- model state


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and give every module back its own flag.

    ``model.train(mode)`` afterwards would not do: a caller may hold some submodules in a
    mode different from their parent's (a frozen BatchNorm in a training network).
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


# --------------------------------------------------------------------------- data


def as_batches(data: Data, batch_size: int | None = None) -> list[Batch]:
    """The batches of ``data`` as a list of ``(x, y)`` tensor pairs, read once.

    ``data`` is one ``(x, y)`` pair (split into ``batch_size`` chunks when given) or an
    iterable of pairs (a list, a DataLoader: its batches are kept as they come, so an
    operator built on it sees one fixed sample however often it is applied).

    >>> import torch
    >>> x, y = torch.zeros(10, 2), torch.zeros(10)
    >>> [len(b[0]) for b in as_batches((x, y), batch_size=4)]
    [4, 4, 2]
    """
    if _is_pair(data):
        x, y = data  # type: ignore[misc]
        if batch_size is None:
            return [(x, y)]
        if batch_size < 1:
            raise BabysitError(f"batch_size: must be >= 1, got {batch_size}")
        return list(zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True))
    batches = []
    for batch in data:  # type: ignore[union-attr]
        if not _is_pair(batch):
            raise BabysitError(
                "data: expected an (x, y) pair of tensors or an iterable of (x, y) batches"
            )
        batches.append((batch[0], batch[1]))
    if batch_size is not None:
        return [b for x, y in batches for b in as_batches((x, y), batch_size)]
    if not batches:
        raise BabysitError("data: no batches (the iterable was empty)")
    return batches


def _is_pair(data: Any) -> bool:
    return (
        isinstance(data, tuple | list)
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    )


# --------------------------------------------------------------------------- parameters


def select_parameters(model: nn.Module, params: Sequence[str] | None = None) -> list[str]:
    """Names of the parameters θ is made of, in ``named_parameters`` order.

    ``params=None`` takes every parameter that requires grad; otherwise each entry names a
    parameter or a module (all the parameters under it).

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    >>> select_parameters(net, ["2", "0.bias"])
    ['0.bias', '2.weight', '2.bias']
    """
    names = [name for name, _ in model.named_parameters()]
    if params is None:
        chosen = [name for name, p in model.named_parameters() if p.requires_grad]
        if not chosen:
            raise BabysitError("params: the model has no parameter that requires grad")
        return chosen
    if isinstance(params, str):
        params = [params]
    modules = dict(model.named_modules())
    wanted: set[str] = set()
    for entry in params:
        if entry in names:
            wanted.add(entry)
        elif entry in modules:
            prefix = f"{entry}." if entry else ""
            under = [n for n in names if n.startswith(prefix)]
            if not under:
                raise BabysitError(f"params: module {entry!r} has no parameters")
            wanted.update(under)
        else:
            raise BabysitError(
                f"params: {entry!r} is neither a parameter nor a module of the model "
                f"(parameters: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
            )
    if not wanted:
        raise BabysitError("params: an empty selection; name at least one parameter or module")
    return [n for n in names if n in wanted]


# --------------------------------------------------------------------------- the loss


def dataset_loss(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], state: dict[str, Tensor]
) -> float:
    """``sum_b n_b L_b / N``: the example-weighted mean of the batch losses, in eval mode,
    with ``state`` (names to tensors) standing in for the model's own."""
    examples = sum(len(x) for x, _ in batches)
    total = 0.0
    with torch.no_grad(), frozen_eval(model):
        for x, y in batches:
            total += len(x) / examples * float(loss_fn(functional_call(model, state, (x,)), y))
    return total


# --------------------------------------------------------------------------- the operator


class HessianOperator:
    """The Hessian of the dataset loss at the model's current weights, as a linear map.

    Built once from a model, a loss and data; ``matvec(v)`` is ``H v`` for a flat vector
    ``v`` of length ``dim`` (the selected parameters, concatenated). The weights are the
    ones the model had when the operator was built; later changes to the model do not
    reach it. ``matvecs`` counts the products taken, for benchmarks and reports.

    Parameters
    ----------
    model, loss_fn, data
        The module, a loss ``loss_fn(model(x), y)`` that averages over the batch, and an
        ``(x, y)`` pair or an iterable of ``(x, y)`` batches.
    params
        Parameter or module names; ``None`` for every parameter that requires grad.
    batch_size
        Split ``data`` (or each of its batches) into chunks of this size, to bound memory.
    scale
        A flat positive vector ``s`` of length ``dim``, or None. With it the operator is
        ``diag(s) H diag(s)``, the Hessian in the rescaled coordinates ``θ = s * φ`` (and
        :meth:`gradient` is ``s * g``, the gradient in those coordinates). An adaptive
        optimizer's step ``P^-1 g`` with ``P = diag(p)`` is gradient descent in such
        coordinates, ``s = p^(-1/2)``: the top eigenvalue of this operator is then that of
        ``P^-1 H`` (similar matrices), the preconditioned sharpness of Cohen et al. (2022,
        arXiv 2207.14484).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        params: Sequence[str] | None = None,
        batch_size: int | None = None,
        scale: Tensor | None = None,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        chosen = [named[n] for n in self.names]
        first = chosen[0]
        self.dtype, self.device = first.dtype, first.device
        self.shapes = [p.shape for p in chosen]
        self.sizes = [p.numel() for p in chosen]
        self.dim = sum(self.sizes)
        with torch.no_grad():
            self.theta = torch.cat([p.detach().reshape(-1) for p in chosen]).to(self.dtype)
            # the rest of the state, fixed and copied: parameters not in θ, and buffers (a
            # custom module might write one even in eval)
            self.fixed: dict[str, Tensor] = {
                n: p.detach().clone() for n, p in model.named_parameters() if n not in self.names
            }
            self.fixed.update({n: b.clone() for n, b in model.named_buffers()})
        self.batches = [
            (x.to(self.device), y.to(self.device)) for x, y in as_batches(data, batch_size)
        ]
        self.examples = sum(len(x) for x, _ in self.batches)
        if self.examples == 0:
            raise BabysitError("data: no examples")
        # batch weights n_b / N: the dataset loss is the example-weighted mean
        self.weights = [len(x) / self.examples for x, _ in self.batches]
        self.matvecs = 0
        if scale is not None:
            if scale.shape != (self.dim,):
                raise ValueError(f"scale: expected shape ({self.dim},), got {tuple(scale.shape)}")
            scale = scale.detach().to(device=self.device, dtype=self.dtype)
        self.scale = scale

    # ----------------------------------------------------------------- pieces

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """A flat vector of length ``dim`` as ``{parameter name: tensor}`` (views)."""
        pieces = torch.split(flat, self.sizes)
        return {n: t.view(s) for n, t, s in zip(self.names, pieces, self.shapes, strict=True)}

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """``{parameter name: tensor}`` (the selected ones) as one flat vector."""
        return torch.cat([tensors[n].reshape(-1).to(self.dtype) for n in self.names])

    def batch_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The loss of one batch at the flat parameters ``theta`` (model must be in eval)."""
        state = {**self.fixed, **self.unflatten(theta)}
        return self.loss_fn(functional_call(self.model, state, (x,)), y)

    # ----------------------------------------------------------------- public

    def loss(self, theta: Tensor | None = None) -> float:
        """The dataset loss at ``theta`` (default: the model's weights)."""
        theta = self.theta if theta is None else theta
        state = {**self.fixed, **self.unflatten(theta)}
        return dataset_loss(self.model, self.loss_fn, self.batches, state)

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        """The flat gradient of the dataset loss at ``theta`` (default: the weights)."""
        theta = (self.theta if theta is None else theta).detach().requires_grad_(True)
        grad = torch.zeros_like(theta)
        with frozen_eval(self.model):
            for w, (x, y) in zip(self.weights, self.batches, strict=True):
                (g,) = torch.autograd.grad(self.batch_loss(theta, x, y), theta)
                grad.add_(g, alpha=w)
        return grad.detach() if self.scale is None else grad.detach() * self.scale

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v``: per batch, the gradient of ``g_b . v``
        (``s * H (s * v)`` with a ``scale`` s)."""
        if v.shape != (self.dim,):
            raise ValueError(f"v: expected shape ({self.dim},), got {tuple(v.shape)}")
        v = v.detach().to(device=self.device, dtype=self.dtype)
        if self.scale is not None:
            v = v * self.scale
        theta = self.theta.detach().requires_grad_(True)
        out = torch.zeros_like(theta)
        with frozen_eval(self.model), twice_differentiable(self.model):
            for w, (x, y) in zip(self.weights, self.batches, strict=True):
                (g,) = torch.autograd.grad(self.batch_loss(theta, x, y), theta, create_graph=True)
                (hv,) = torch.autograd.grad(g @ v, theta)
                out.add_(hv, alpha=w)
        self.matvecs += 1
        return out.detach() if self.scale is None else out.detach() * self.scale

    __call__ = matvec

    def dense(self, max_dim: int = 2000) -> Tensor:
        """The Hessian as a ``dim x dim`` matrix, one product per column: for tiny models
        only (the damped Newton optimizer, checks); refuses above ``max_dim``."""
        if self.dim > max_dim:
            raise BabysitError(
                f"the Hessian has {self.dim} rows, above the limit of {max_dim} for a dense one"
            )
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        columns = torch.stack([self.matvec(e) for e in eye], 1)
        return 0.5 * (columns + columns.T)


def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    vector: Tensor | dict[str, Tensor],
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> Tensor | dict[str, Tensor]:
    """``H v`` of the dataset loss at the model's weights, in the form ``vector`` came in.

    ``vector`` is flat (length: the number of selected parameters) or a dict from
    parameter name to tensor; the answer has the same form. For many products build a
    :class:`HessianOperator` once and call it.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1, bias=False).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(1.0)
    >>> x = torch.eye(2, dtype=torch.float64); y = torch.zeros(2, 1, dtype=torch.float64)
    >>> hessian_vector_product(model, nn.MSELoss(), (x, y), {"weight": torch.ones(1, 2).double()})
    {'weight': tensor([[1., 1.]], dtype=torch.float64)}
    """
    op = HessianOperator(model, loss_fn, data, params=params, batch_size=batch_size)
    if isinstance(vector, dict):
        return op.unflatten(op.matvec(op.flatten(vector)))
    return op.matvec(vector)
