"""What kind of point training ended at: minimum, maximum, saddle, or not critical.

The second-derivative test (e.g. Nocedal & Wright, *Numerical Optimization*, Theorems
2.3-2.4; for networks, Dauphin et al. 2014 on saddles): a point is critical when the
gradient vanishes; there, a positive-definite Hessian makes it a strict minimum, a
negative-definite one a strict maximum, and one with eigenvalues of both signs a saddle.
Networks have flat directions (symmetries, dead units), so "minimum" here allows
eigenvalues down to ``-eig_tol`` times the largest |eigenvalue|, and ``strict`` says
whether the smallest one is clearly positive. Only the extreme eigenvalues matter, and
Lanczos finds those first.

Also reported: the condition number lambda_max / lambda_min of a strict minimum, and the
curvature step-size limit 2 / lambda_max: gradient descent with a fixed rate above it
diverges along the top eigenvector of a quadratic (LeCun, Bottou, Orr & Müller,
"Efficient BackProp", 1998, section 5) - next to the learning rate used, when given.

Example
-------
>>> import torch
>>> from torch import nn
>>> model = nn.Linear(2, 1, bias=False).double()
>>> with torch.no_grad():
...     _ = model.weight.zero_()
>>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).double(); y = torch.zeros(2, 1).double()
>>> point = classify_critical_point(model, nn.MSELoss(), (x, y), lr=0.1)
>>> point.kind, round(point.condition_number, 9), round(point.step_size_limit, 9)
('minimum', 4.0, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from babysit.errors import BabysitError
from babysit.landscape.hvp import Data, HessianOperator, LossFn
from babysit.landscape.spectrum import HessianEigen, hessian_eigenvalues

__all__ = ["CriticalPoint", "classify_critical_point"]


@dataclass
class CriticalPoint:
    """The verdict and the numbers behind it.

    ``kind``: "minimum", "maximum", "saddle", "not_critical" (the gradient is above
    ``grad_tol``) or "degenerate" (critical, but every eigenvalue is within ``eig_tol``
    of 0: the second-order test cannot tell). ``strict``: the extreme eigenvalue on the
    minimum's (maximum's) side is clearly non-zero. The curvature numbers are filled in
    for every kind, so a non-critical point still shows its local shape.
    """

    kind: str
    strict: bool
    loss: float
    gradient_norm: float
    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    condition_number: float | None
    step_size_limit: float | None
    lr: float | None
    lr_above_limit: bool | None
    grad_tol: float
    eig_tol: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()
        }


def classify_critical_point(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Data | None = None,
    *,
    grad_tol: float = 1e-4,
    eig_tol: float = 1e-6,
    lr: float | None = None,
    tol: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    top: HessianEigen | None = None,
    bottom: HessianEigen | None = None,
) -> CriticalPoint:
    """Classify the model's weights as a point of the dataset loss.

    Parameters
    ----------
    grad_tol
        The point is critical when the full-data gradient norm is at most this
        (absolute; the gradient norm is reported, so a caller can judge a trained
        network that SGD left near, not at, a critical point).
    eig_tol
        An eigenvalue counts as zero when its magnitude is at most ``eig_tol`` times the
        largest |eigenvalue|.
    lr
        The learning rate used, to compare with the step-size limit 2 / lambda_max.
    tol, max_steps, seed
        Passed to the two Lanczos runs (top-1 and bottom-1).
    top, bottom
        Eigenpairs already computed at this point (``which="top"`` and ``"bottom"``,
        e.g. the top-5 and bottom-5 a report shows): their first pair is used and that
        Lanczos run is skipped.
    """
    op = (
        model
        if isinstance(model, HessianOperator)
        else HessianOperator(model, loss_fn, data, params=params, batch_size=batch_size)
    )
    gradient_norm = float(op.gradient().norm())
    if top is None:
        top = hessian_eigenvalues(op, k=1, which="top", tol=tol, max_steps=max_steps, seed=seed)
    if bottom is None:
        bottom = hessian_eigenvalues(op, k=1, which="bottom", tol=tol, max_steps=max_steps, seed=seed)
    if top.which != "top" or bottom.which != "bottom":
        raise BabysitError(f"top, bottom: expected which='top' and 'bottom', got {top.which!r} and {bottom.which!r}")
    lam_max, lam_min = float(top.eigenvalues[0]), float(bottom.eigenvalues[0])
    zero = eig_tol * max(abs(lam_max), abs(lam_min))
    positive, negative = lam_max > zero, lam_min < -zero
    if positive and negative:
        verdict = "saddle"
    elif positive:
        verdict = "minimum"
    elif negative:
        verdict = "maximum"
    else:
        verdict = "degenerate"
    strict = (verdict == "minimum" and lam_min > zero) or (verdict == "maximum" and lam_max < -zero)
    if gradient_norm > grad_tol:
        verdict, strict = "not_critical", False
    condition = lam_max / lam_min if lam_min > zero else None
    limit = 2.0 / lam_max if lam_max > 0 else None
    return CriticalPoint(
        kind=verdict,
        strict=strict,
        loss=op.loss(),
        gradient_norm=gradient_norm,
        lambda_max=lam_max,
        lambda_min=lam_min,
        residual_max=float(top.residuals[0]),
        residual_min=float(bottom.residuals[0]),
        condition_number=condition,
        step_size_limit=limit,
        lr=lr,
        lr_above_limit=None if lr is None or limit is None else lr > limit,
        grad_tol=grad_tol,
        eig_tol=eig_tol,
    )
