"""Damped Newton's method with Levenberg-Marquardt damping, for small models.

Each step solves the exact Newton system of the loss ``L`` on the current batch,

    (H + λ I) d = -g,        θ <- θ + d,

with ``g`` the gradient and ``H`` the full Hessian, built by double backward (one batched
vector-Jacobian product per block of Hessian rows). λ is the Levenberg-Marquardt damping
(Levenberg 1944, Marquardt 1963; the form in Nocedal & Wright, *Numerical Optimization*,
2006, ch. 3.4 and 10.3): a step that lowers the loss is taken and λ shrinks tenfold, so
the method turns into pure Newton near a minimum and converges quadratically; a step
that does not lower it is undone and retried with λ ten times larger, which bends the
step towards a short gradient step. λ is also raised until ``H + λ I`` is positive
definite (a Cholesky factorisation succeeds), so a saddle or a maximum of a nonconvex
loss never draws the step uphill.

The step needs the loss as a function of the parameters, so ``step`` takes a closure, as
torch's L-BFGS does, but one that may be called in two ways:

- ``closure()`` zeroes the gradients, computes the loss, backpropagates and returns it
  (the torch convention; Newton then uses ``.grad`` only, not the Hessian: not enough);
- ``closure(backward=False)`` returns the loss *with its graph* and does not
  backpropagate: this is what Newton calls, once for ``g`` and ``H`` and once per trial
  step under ``torch.no_grad()``. :class:`babysit.train.Trainer` gives this closure to
  every optimizer with ``needs_closure = True``.

Weight decay (a group's ``weight_decay``) is the L2 term ``wd/2 ||w||^2``: ``wd w`` on the
gradient and ``wd`` on the Hessian's diagonal. ``lr`` is kept in the groups for schedules
and logs but not used: the damping sets the step length (a full step, ``lr = 1``, is what
makes Newton converge in a few steps).

Full batch. Newton fits the quadratic model of the loss it is given. On a mini-batch with
fewer examples than parameters the Hessian is singular and the step fits that one batch
(softmax regression on MNIST-1D, 410 parameters, batches of 128: a training loss of 6.1
after 3 epochs, far above the 2.3 of the initial uniform guess); with ``data.batch_size: full`` the same model is at its optimum, 1.58, in
about 5 steps. Use it full batch, as Quickprop and L-BFGS.

Cost: the Hessian of ``D`` parameters takes ``D`` backward passes (batched) and ``D^2``
memory, the solve ``D^3 / 3``. Above :data:`MAX_PARAMETERS` the optimizer refuses; L-BFGS
(``optimizer.name: lbfgs``) is the quasi-Newton method for larger models.

Example
-------
A quadratic ``1/2 θᵀAθ - bᵀθ`` is minimised by one undamped step, ``θ = A⁻¹b``:

>>> import torch
>>> theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
>>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
>>> b = torch.tensor([1.0, -1.0], dtype=torch.float64)
>>> opt = Newton([theta], damping=0.0)
>>> def closure(backward=True):
...     loss = 0.5 * theta @ A @ theta - b @ theta
...     if backward:
...         opt.zero_grad()
...         loss.backward()
...     return loss
>>> _ = opt.step(closure)
>>> torch.allclose(theta.detach(), torch.linalg.solve(A, b))
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from babysit.errors import BabysitError
from babysit.nets.double_backward import twice_differentiable

MAX_PARAMETERS = 5000  # a 5,000 x 5,000 Hessian: 100 MB in float32, a solve of about 1 s on a CPU core
DAMPING_FLOOR = 1e-8  # where λ restarts when it was 0 and has to grow
DAMPING_CEILING = 1e12  # past this the step is essentially zero; give up on the step
ROW_BLOCK = 256  # Hessian rows per batched double backward (bounds the memory of the vmap)


def check_parameter_count(count: int, limit: int = MAX_PARAMETERS) -> None:
    """Refuse, in one line naming the option, a model too large for a dense Hessian.

    >>> check_parameter_count(6000)
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: optimizer.name: newton solves with the exact Hessian and allows at most 5,000 parameters; this model has 6,000. Use optimizer.name: lbfgs (or quickprop / adam) for a model this size
    """
    if count > limit:
        raise BabysitError(
            f"optimizer.name: newton solves with the exact Hessian and allows at most {limit:,} "
            f"parameters; this model has {count:,}. Use optimizer.name: lbfgs (or quickprop / adam) "
            "for a model this size"
        )


def dense_hessian(gradient: Tensor, params: list[Tensor]) -> Tensor:
    """The ``D x D`` Hessian from a flat ``gradient`` built with ``create_graph=True``.

    Row ``i`` is the gradient of ``gradient[i]``; blocks of :data:`ROW_BLOCK` rows go through
    one batched backward (``is_grads_batched``, torch's vmap), one row at a time where an
    operation has no batching rule. Symmetrised, as round-off leaves it slightly off.

    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> (g,) = torch.autograd.grad((w[0] ** 2 * w[1]), [w], create_graph=True)
    >>> dense_hessian(g, [w])
    tensor([[4., 2.],
            [2., 0.]])
    """
    dim = gradient.numel()
    eye = torch.eye(dim, dtype=gradient.dtype, device=gradient.device)
    rows = []
    for start in range(0, dim, ROW_BLOCK):
        block = eye[start : start + ROW_BLOCK]
        try:
            parts = torch.autograd.grad(gradient, params, block, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
            rows.append(_flat_rows(parts, params, len(block)))
        except RuntimeError:  # no vmap rule for some operation: row by row
            for row in block:
                parts = torch.autograd.grad(gradient, params, row, retain_graph=True, allow_unused=True)
                rows.append(_flat_rows([None if p is None else p[None] for p in parts], params, 1))
    hessian = torch.cat(rows)
    return 0.5 * (hessian + hessian.T)


def _flat_rows(parts: Iterable[Tensor | None], params: list[Tensor], count: int) -> Tensor:
    return torch.cat([
        (torch.zeros(count, p.numel(), dtype=p.dtype, device=p.device) if part is None else part.reshape(count, -1))
        for part, p in zip(parts, params, strict=True)
    ], 1)


class Newton(torch.optim.Optimizer):
    """Damped Newton steps with Levenberg-Marquardt damping (see the module docstring).

    Parameters
    ----------
    params: parameters or parameter groups (``weight_decay`` per group).
    damping: the initial λ (the state keeps the current one; it round-trips through
        ``state_dict``).
    max_tries: trial steps per ``step`` before giving up on it (λ grows tenfold each).
    module: the model, when known: a weight-norm model's Hessian then goes through
        :func:`babysit.nets.double_backward.twice_differentiable` (torch's fused weight norm has a
        wrong double backward on the CPU).
    max_parameters: the limit on the number of parameters (see :func:`check_parameter_count`).
    """

    needs_closure = True

    def __init__(self, params: Any, lr: float = 1.0, damping: float = 1e-3, weight_decay: float = 0.0,
                 max_tries: int = 20, module: nn.Module | None = None, max_parameters: int = MAX_PARAMETERS):
        if damping < 0:
            raise ValueError(f"damping: must be >= 0, got {damping}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        check_parameter_count(sum(p.numel() for g in self.param_groups for p in g["params"]), max_parameters)
        self.initial_damping = damping
        self.max_tries = max_tries
        self.module = module

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _decay(self) -> list[tuple[Tensor, float]]:
        return [(p, g["weight_decay"]) for g in self.param_groups if g["weight_decay"] for p in g["params"]]

    def _objective(self, closure: Callable[..., Tensor]) -> Tensor:
        loss = closure(backward=False)
        for p, wd in self._decay():
            loss = loss + 0.5 * wd * p.pow(2).sum()
        return loss

    def step(self, closure: Callable[..., Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One damped Newton step; returns the loss before it (with the L2 term)."""
        if closure is None:
            raise RuntimeError("Newton.step needs a closure: closure(backward=False) -> loss with its graph")
        params = self._params()
        state = self.state[params[0]]
        damping = float(state.get("damping", self.initial_damping))
        twice = self._twice_differentiable()
        with torch.enable_grad(), twice:
            loss = self._objective(closure)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            gradient = torch.cat([
                (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)
            ])
            hessian = dense_hessian(gradient, params) if gradient.requires_grad else torch.zeros(
                len(gradient), len(gradient), dtype=gradient.dtype, device=gradient.device)
        loss, gradient = loss.detach(), gradient.detach()
        # the monitors and the gradient clip read .grad: the gradient the step was taken on
        for p, piece in zip(params, torch.split(gradient, [p.numel() for p in params]), strict=True):
            p.grad = piece.view_as(p).clone()

        # solve in float64: the Hessian of a nearly separable problem spans many decades
        h64, g64 = hessian.double(), gradient.double()
        eye = torch.eye(len(g64), dtype=torch.float64, device=g64.device)
        start = torch.cat([p.detach().reshape(-1) for p in params])
        for _ in range(self.max_tries):
            factor, info = torch.linalg.cholesky_ex(h64 + damping * eye)
            if info == 0 and torch.isfinite(factor).all():
                direction = torch.cholesky_solve(-g64[:, None], factor)[:, 0].to(start.dtype)
                self._set(params, start + direction)
                with torch.no_grad():
                    trial = self._objective(closure)
                # at the optimum a step changes the loss by rounding only: that is no failure
                if torch.isfinite(trial) and trial <= loss + 4 * torch.finfo(loss.dtype).eps * loss.abs():
                    state["damping"] = damping / 10
                    return loss
            # not positive definite, or the loss did not go down: lean towards gradient descent
            damping = max(damping * 10, DAMPING_FLOOR)
            if damping > DAMPING_CEILING:
                break
        self._set(params, start)  # no step lowered the loss: stay, with λ raised for the next batch
        state["damping"] = min(damping, DAMPING_CEILING)
        return loss

    def _twice_differentiable(self) -> contextlib.AbstractContextManager[None]:
        if self.module is None:
            return contextlib.nullcontext()
        return twice_differentiable(self.module)

    @staticmethod
    @torch.no_grad()
    def _set(params: list[Tensor], flat: Tensor) -> None:
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
