"""The Hessian spectrum of a model's loss: extreme eigenpairs, the trace, the density.

- :func:`hessian_eigenvalues`: top-k / bottom-k / largest-magnitude eigenpairs by
  Lanczos with full re-orthogonalisation (Lanczos 1950; Golub & Van Loan 10.1-10.3), run
  until every wanted Ritz pair's residual is below ``tol`` times the largest |Ritz
  value|, or by power iteration with deflation (von Mises 1929; Hotelling deflation kept
  as a projection). Each pair comes with its explicit residual ||H v - lambda v||.
- :func:`hessian_trace`: Hutchinson's estimator (Hutchinson 1989), E[z^T H z] = tr H for
  Rademacher z, with its standard error; a fixed number of probes (PyHessian stops on the
  running mean and is 5% off).
- :func:`spectral_density`: stochastic Lanczos quadrature (Lin, Saad & Yang 2016;
  Ghorbani, Krishnan & Xiao 2019): nodes and weights of a discrete measure that matches
  the spectrum's moments, smoothed with a Gaussian for plots.

All of them take any module, loss and data (see :mod:`babysit.landscape.hvp`), leave the
model as it was, and give the same answer for the same ``seed``.

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
>>> x, y = torch.randn(32, 3).double(), torch.randn(32, 1).double()
>>> top = hessian_eigenvalues(model, nn.MSELoss(), (x, y), k=2)
>>> bool(top.eigenvalues[0] >= top.eigenvalues[1]), bool(top.residuals.max() < 1e-6)
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from babysit.errors import BabysitError
from babysit.landscape.hvp import Data, HessianOperator, LossFn
from babysit.landscape.lanczos import Lanczos, random_unit

Which = Literal["top", "bottom", "magnitude"]

# relative residual an eigenpair is converged at, by working precision
DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-5}

__all__ = [
    "HessianEigen",
    "TraceEstimate",
    "SpectralDensity",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
]


def _operator(model, loss_fn, data, params, batch_size) -> HessianOperator:
    if isinstance(model, HessianOperator):
        return model
    return HessianOperator(model, loss_fn, data, params=params, batch_size=batch_size)


# --------------------------------------------------------------------------- eigenpairs


@dataclass
class HessianEigen:
    """Eigenpairs of the Hessian.

    ``eigenvalues`` (k,) in the order asked for (top: descending; bottom: ascending;
    magnitude: descending |lambda|), ``eigenvectors`` (k, D) unit rows over the flat
    parameters ``names``, ``residuals`` (k,) the explicit ||H v - lambda v||; ``matvecs``
    Hessian-vector products used; ``converged``: every pair met the tolerance (for power
    iteration on its deflated residual, see ``_power_one``; the explicit one of a later
    pair can be up to the earlier pairs' residuals above it).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    which: str
    method: str
    matvecs: int
    converged: bool
    tol: float
    names: list[str] = field(default_factory=list)
    shapes: list[torch.Size] = field(default_factory=list)

    def vector(self, i: int) -> dict[str, Tensor]:
        """Eigenvector ``i`` as ``{parameter name: tensor}`` (a direction for surfaces)."""
        pieces = torch.split(self.eigenvectors[i], [math.prod(s) for s in self.shapes])
        return {n: t.view(s) for n, t, s in zip(self.names, pieces, self.shapes, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no eigenvectors)."""
        return {
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "residuals": [float(r) for r in self.residuals],
            "which": self.which,
            "method": self.method,
            "matvecs": self.matvecs,
            "converged": self.converged,
            "tol": self.tol,
        }


def _order(values: Tensor, which: str) -> Tensor:
    if which == "top":
        return torch.argsort(values, descending=True)
    if which == "bottom":
        return torch.argsort(values)
    return torch.argsort(values.abs(), descending=True)


def hessian_eigenvalues(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Data | None = None,
    k: int = 5,
    which: Which = "top",
    *,
    method: Literal["lanczos", "power"] = "lanczos",
    tol: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    start: Tensor | None = None,
) -> HessianEigen:
    """The ``k`` extreme eigenpairs of the Hessian of the dataset loss.

    Parameters
    ----------
    model, loss_fn, data
        Any module, a batch-mean loss and an ``(x, y)`` pair or iterable of batches; or a
        built :class:`HessianOperator` as ``model`` (then ``loss_fn`` and ``data`` unused).
    k, which
        How many, and which end: ``"top"`` largest algebraic (default), ``"bottom"``
        smallest algebraic, ``"magnitude"`` largest |lambda|.
    method
        ``"lanczos"`` (full re-orthogonalisation; restarts in the complement of an
        exhausted Krylov space) or ``"power"`` (power iteration with deflation, shifted
        so that "top" and "bottom" mean the algebraic ends).
    tol
        Stop when each wanted pair's residual ||H v - lambda v|| is at most ``tol`` times
        the largest |eigenvalue| seen (the error of lambda is at most the residual).
        Default: 1e-8 in float64, 1e-5 in float32 (what H v in that precision allows).
    max_steps
        Lanczos steps (products) at most; power iteration: products per eigenpair.
        Default: min(D, 500) for Lanczos, 2000 for power iteration.
    seed
        Seeds the start vectors (a ``torch.Generator``; the global RNG is untouched).
    params, batch_size
        Parameter or module names to restrict to; chunk size for the data.
    start
        Lanczos only: the first run's start vector (flat, length D; need not be unit)
        instead of a random one. Tracking lambda_max along training, the last step's top
        eigenvector is a warm start: the Krylov space holds the new one almost at once
        and far fewer products are needed (a start that is already an eigenvector
        converges in one). A start nearly orthogonal to the wanted eigenvector can stop on
        another one first: a warm start assumes the top direction moved little since.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1, bias=False).double()
    >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).double(); y = torch.zeros(2, 1).double()
    >>> [round(float(v), 9) for v in hessian_eigenvalues(model, nn.MSELoss(), (x, y), k=2).eigenvalues]
    [4.0, 1.0]
    """
    if which not in ("top", "bottom", "magnitude"):
        raise BabysitError(f"which: must be top, bottom or magnitude, got {which!r}")
    op = _operator(model, loss_fn, data, params, batch_size)
    if not 1 <= k <= op.dim:
        raise BabysitError(f"k: must be between 1 and the {op.dim} parameters, got {k}")
    if tol is None:
        tol = DEFAULT_TOL.get(op.dtype, 1e-3)
    generator = torch.Generator().manual_seed(seed)
    if start is not None:
        if method != "lanczos":
            raise BabysitError(f"start: only method='lanczos' takes a start vector, got method={method!r}")
        if start.shape != (op.dim,) or not bool(torch.isfinite(start).all()) or float(start.norm()) == 0.0:
            raise BabysitError(f"start: expected a finite non-zero vector of shape ({op.dim},), "
                               f"got shape {tuple(start.shape)}")
    products_before = op.matvecs
    if method == "lanczos":
        values, vectors, converged = _lanczos_eigen(op, k, which, tol, max_steps, generator, start)
    elif method == "power":
        values, vectors, converged = _power_eigen(op, k, which, tol, max_steps, generator)
    else:
        raise BabysitError(f"method: must be lanczos or power, got {method!r}")
    residuals = torch.stack(
        [(op.matvec(v) - lam * v).norm() for lam, v in zip(values, vectors, strict=True)]
    )
    return HessianEigen(
        eigenvalues=values,
        eigenvectors=vectors,
        residuals=residuals.to(torch.float64),
        which=which,
        method=method,
        matvecs=op.matvecs - products_before,
        converged=converged,
        tol=tol,
        names=list(op.names),
        shapes=list(op.shapes),
    )


def _lanczos_eigen(op, k, which, tol, max_steps, generator, start=None) -> tuple[Tensor, Tensor, bool]:
    """Lanczos until the wanted pairs converge, then again in their complement.

    One start vector sees one copy of a repeated eigenvalue (its Krylov space holds one
    direction of each eigenspace), and converged pairs give no sign of a second copy. So
    a second run deflates the pairs found and looks for more: whatever it finds that
    belongs among the wanted k joins them, and the runs repeat until one adds nothing
    (usually the second). That costs about one more run, and buys the multiplicities;
    for k = 1 there is nothing to buy and one run is made.
    """
    max_steps = min(op.dim, 500) if max_steps is None else min(op.dim, max_steps)
    values = torch.empty(0, dtype=torch.float64)
    vectors = torch.empty(0, op.dim, dtype=op.dtype, device=op.device)
    converged = True
    for _ in range(k + 1):
        deflate = vectors if len(vectors) else None
        if deflate is not None and len(deflate) >= op.dim:
            break
        new_values, new_vectors, new_converged = _lanczos_run(
            op, k, which, tol, max_steps, generator, deflate, start if deflate is None else None
        )
        merged_values = torch.cat([values, new_values])
        merged_vectors = torch.cat([vectors, new_vectors])
        keep = _order(merged_values, which)[:k]
        added = bool((keep >= len(values)).any())
        if added:
            converged = converged and new_converged if len(values) else new_converged
        values, vectors = merged_values[keep], merged_vectors[keep]
        if not added or k == 1 or len(values) >= op.dim:
            break  # k = 1: a second copy of the top value changes nothing
    return values.to(op.dtype), vectors, converged


def _lanczos_run(op, k, which, tol, max_steps, generator, deflate, start=None):
    run = Lanczos(op.matvec, op.dim, op.dtype, generator, op.device, start=start, restart=True, deflate=deflate)
    k = min(k, run.space)
    converged = False
    while run.steps < max_steps and not run.exhausted:
        run.step()
        if run.steps < k:
            continue
        values, vectors, estimates = run.ritz()
        wanted = _order(values, which)[:k]
        if run.exhausted or bool((estimates[wanted] <= tol * float(values.abs().max())).all()):
            converged = True
            break
    values, vectors, estimates = run.ritz()
    wanted = _order(values, which)[:k]
    if not converged:
        converged = bool((estimates[wanted] <= tol * float(values.abs().max())).all())
    return values[wanted], run.ritz_vectors(vectors[:, wanted]), converged


def _power_eigen(op, k, which, tol, max_steps, generator) -> tuple[Tensor, Tensor, bool]:
    """Power iteration, one pair at a time, each in the complement of those found.

    Power iteration finds the largest |lambda|. For the algebraic ends it runs on a
    shifted operator: H + sI for "top", sI - H for "bottom", with s the largest |lambda|
    (found first), so every eigenvalue of the shifted map is >= 0 and the wanted end is
    its dominant one (von Mises & Pollaczek-Geiringer 1929; deflation after Hotelling
    1933, kept as a projection onto the complement of the pairs found). Each pair
    converges at the ratio of the next shifted eigenvalue to its own: slowly for close
    eigenvalues, never for "magnitude" when +lambda and -lambda are both eigenvalues
    (then ``converged`` is False and the residuals say so). Lanczos is the better method;
    this one is here as the common reference.
    """
    max_steps = 2000 if max_steps is None else max_steps
    dominant, _, _ = _power_one(op, [], 0.0, 1.0, tol, max_steps, generator, scale=None)
    s = abs(dominant) if which != "magnitude" else 0.0
    sign = -1.0 if which == "bottom" else 1.0
    values, found, ok = [], [], True
    for _ in range(k):
        lam, v, conv = _power_one(
            op, found, s, sign, tol, max_steps, generator, scale=abs(dominant)
        )
        values.append(lam)
        found.append(v)
        ok = ok and conv
    values_t = torch.tensor(values, dtype=torch.float64)
    order = _order(values_t, which)
    vectors = torch.stack(found)[order]
    return values_t[order].to(op.dtype), vectors, ok


def _power_one(op, found, shift, sign, tol, max_steps, generator, scale):
    """One eigenpair of ``sign * H + shift * I`` restricted to the complement of ``found``.

    Convergence is judged on the deflated residual ||P H v - lambda v||, P the projection
    onto that complement. The full one, ||H v - lambda v||, has a floor: with U the found
    vectors and v orthogonal to them, U^T H v = (H U - U Lambda)^T v, the residuals left
    in the found pairs, so it stalls at about their size (just above ``tol`` when they
    only just passed) and the loop ran to ``max_steps``. The pair's eigenvalue error is
    second order in those residuals, and the explicit residuals are reported anyway.
    """
    basis = torch.stack(found) if found else None

    def project(w: Tensor) -> Tensor:
        if basis is None:
            return w
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    v = project(random_unit(op.dim, generator, op.dtype, op.device))
    v = v / v.norm()
    lam, converged = 0.0, False
    for _ in range(max_steps):
        hv = project(op.matvec(v))  # the deflated operator P H P (v = P v)
        lam = float(v @ hv)  # Rayleigh quotient
        residual = float((hv - lam * v).norm())
        reference = abs(lam) if scale is None else scale
        if residual <= tol * max(reference, 1e-300):
            converged = True
            break
        w = project(sign * hv + shift * v)  # again: keeps v in the complement despite rounding
        norm = w.norm()
        if float(norm) == 0.0:  # v spans a null direction of the shifted map
            converged = True
            break
        v = w / norm
    return lam, v, converged


# --------------------------------------------------------------------------- trace


@dataclass
class TraceEstimate:
    """Hutchinson's estimate: ``trace`` (the mean of z^T H z over ``probes`` Rademacher
    vectors), its ``std_error`` (sample std / sqrt(probes)) and the ``samples``."""

    trace: float
    std_error: float
    probes: int
    samples: Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"trace": self.trace, "std_error": self.std_error, "probes": self.probes}


def hessian_trace(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Data | None = None,
    probes: int = 100,
    *,
    seed: int = 0,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> TraceEstimate:
    """The trace of the Hessian by Hutchinson's estimator (Hutchinson 1989).

    For z with independent +-1 entries, E[z^T H z] = tr H and the variance is
    2 sum_{i != j} H_ij^2, the smallest of the common probe distributions. All ``probes``
    run (no early stop on the running mean: that biases the estimate towards where it
    happened to settle); the standard error says how far to trust it.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1, bias=False).double()
    >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).double(); y = torch.zeros(2, 1).double()
    >>> hessian_trace(model, nn.MSELoss(), (x, y), probes=10).trace  # diagonal: exact
    5.0
    """
    if probes < 2:
        raise BabysitError(f"probes: must be >= 2 for a standard error, got {probes}")
    op = _operator(model, loss_fn, data, params, batch_size)
    generator = torch.Generator().manual_seed(seed)
    samples = torch.empty(probes, dtype=torch.float64)
    for i in range(probes):
        z = torch.randint(0, 2, (op.dim,), generator=generator).to(op.dtype).mul_(2).sub_(1)
        z = z.to(op.device)
        samples[i] = float(z @ op.matvec(z))
    std_error = float(samples.std(correction=1)) / math.sqrt(probes)
    return TraceEstimate(float(samples.mean()), std_error, probes, samples)


# --------------------------------------------------------------------------- density


@dataclass
class SpectralDensity:
    """A discrete estimate of the eigenvalue density: ``nodes`` (Ritz values of every
    run) with ``weights`` (non-negative, summing to 1).

    ``density(grid, sigma)`` smooths it with a Gaussian of width ``sigma`` for plots.
    """

    nodes: Tensor
    weights: Tensor
    runs: int
    steps: int

    def density(self, grid: Tensor, sigma: float | None = None) -> Tensor:
        """The Gaussian-smoothed density at the points ``grid`` (default ``sigma``: 1% of
        the nodes' range, at least 1e-12)."""
        if sigma is None:
            sigma = max(1e-12, 0.01 * float(self.nodes.max() - self.nodes.min()))
        grid = grid.to(torch.float64)
        z = (grid[:, None] - self.nodes[None, :]) / sigma
        return (self.weights[None, :] * torch.exp(-0.5 * z**2)).sum(1) / (
            sigma * math.sqrt(2 * math.pi)
        )

    @property
    def negative_mass_ratio(self) -> float:
        """sum of |lambda| over negative eigenvalues / sum over positive ones (0 when
        the estimate has no negative node; inf when it has no positive one)."""
        negative = float((self.weights * (-self.nodes).clamp(min=0)).sum())
        positive = float((self.weights * self.nodes.clamp(min=0)).sum())
        if negative == 0.0:
            return 0.0
        return negative / positive if positive > 0 else math.inf

    def positive_condition_number(self, zero_tol: float = 1e-6) -> float | None:
        """The condition number of the positive part of the spectrum: the largest node over
        the smallest node above ``zero_tol`` times the largest |node| (smaller ones count as
        the zero eigenvalues a network's symmetries and dead units give). None when no node
        is above that.

        The top node converges to lambda_max; the small nodes are quadrature nodes, exact
        eigenvalues only when a run exhausts its Krylov space (``steps`` >= the number of
        distinct eigenvalues), so for a large model this is an estimate at the resolution
        of the quadrature.
        """
        top = float(self.nodes.abs().max())
        positive = self.nodes[self.nodes > zero_tol * top]
        if not len(positive):
            return None
        return float(positive.max() / positive.min())

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [float(v) for v in self.nodes],
            "weights": [float(w) for w in self.weights],
            "runs": self.runs,
            "steps": self.steps,
            "negative_mass_ratio": self.negative_mass_ratio,
            "positive_condition_number": self.positive_condition_number(),
        }


def spectral_density(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Data | None = None,
    steps: int = 90,
    runs: int = 10,
    *,
    seed: int = 0,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> SpectralDensity:
    """The eigenvalue density by stochastic Lanczos quadrature.

    Lin, Saad & Yang, "Approximating spectral densities of large matrices" (SIAM Review
    2016), and Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
    via Hessian Eigenvalue Density" (ICML 2019). For a unit start vector v, ``steps``
    Lanczos steps give T = S diag(theta) S^T, and sum_i S_1i^2 delta(lambda - theta_i) is
    the Gauss quadrature of the measure v^T delta(lambda - H) v, exact for polynomials of
    degree < 2*steps. With v = z / sqrt(D) (z Rademacher) that measure's expectation is
    the spectral density (1/D) sum_j delta(lambda - lambda_j); ``runs`` start vectors are
    averaged. Ritz values lie inside [lambda_min, lambda_max] (Cauchy interlacing) and
    the extreme ones converge to the extreme eigenvalues, so the top node is lambda_max
    once ``steps`` is large enough. Full re-orthogonalisation keeps ghost copies (and
    the spurious weight they carry) out; a run whose Krylov space is exhausted stops
    there, where its quadrature is exact.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1, bias=False).double()
    >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).double(); y = torch.zeros(2, 1).double()
    >>> d = spectral_density(model, nn.MSELoss(), (x, y), steps=5, runs=4)
    >>> sorted(set(round(float(n), 9) for n in d.nodes)), round(float(d.weights.sum()), 12)
    ([1.0, 4.0], 1.0)
    """
    if steps < 1 or runs < 1:
        raise BabysitError(f"steps and runs: must be >= 1, got steps={steps}, runs={runs}")
    op = _operator(model, loss_fn, data, params, batch_size)
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(runs):
        z = torch.randint(0, 2, (op.dim,), generator=generator).to(torch.float64).mul_(2).sub_(1)
        run = Lanczos(
            op.matvec, op.dim, op.dtype, generator, op.device, start=z.to(op.dtype), restart=False
        )
        while run.steps < steps and not run.exhausted:
            run.step()
        values, vectors, _ = run.ritz()
        nodes.append(values)
        weights.append(vectors[0] ** 2 / runs)
    weights_t = torch.cat(weights)
    # each run's weights sum to 1 up to rounding (S is orthogonal); make the total exact
    return SpectralDensity(torch.cat(nodes), weights_t / weights_t.sum(), runs, steps)
