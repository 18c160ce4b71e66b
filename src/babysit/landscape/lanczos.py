"""The Lanczos iteration with full re-orthogonalisation, for any symmetric linear map.

Lanczos, "An iteration method for the solution of the eigenvalue problem of linear
differential and integral operators" (1950); Golub & Van Loan, *Matrix Computations*,
section 10.1 (the iteration) and 10.3 (why it needs re-orthogonalisation in floating
point). From a unit start vector q_1 it builds an orthonormal basis Q of the Krylov space
{q_1, H q_1, H^2 q_1, ...} in which H is tridiagonal, T = Q^T H Q, one product H q a
step. The eigenvalues of T (Ritz values) converge to the extreme eigenvalues of H first.

In floating point the basis loses orthogonality as Ritz values converge and copies of
converged eigenvalues ("ghosts") appear. Here every new vector is orthogonalised against
the whole basis, twice (Kahan's "twice is enough"), at O(m D) a step: cheap next to an
H v of a network, and the Ritz values are then as accurate as the products.

When the Krylov space is exhausted (an invariant subspace: the next vector is zero to
rounding), the iteration either stops (``restart=False``: the quadrature of SLQ is then
exact) or continues from a fresh random vector orthogonal to the basis (T gets a zero
off-diagonal), so repeated eigenvalues are found with their multiplicity once the
basis fills the space.

Example
-------
>>> import torch
>>> h = torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64))
>>> run = Lanczos(lambda v: h @ v, dim=3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> for _ in range(3):
...     run.step()
>>> [round(float(t), 12) for t in run.ritz()[0]]
[-2.0, 1.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]

# a next vector this much smaller than the largest |alpha|, |beta| seen means the Krylov
# space is invariant (relative to the operator's scale, in the working precision)
BREAKDOWN = {torch.float64: 1e-12, torch.float32: 1e-5}


def random_unit(
    dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Tensor:
    """A Gaussian unit vector drawn from ``generator`` (on the CPU, in float64, so a seed
    gives the same direction in every precision and on every device)."""
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(device=device, dtype=dtype)


class Lanczos:
    """The iteration's state: the basis ``Q`` (rows), ``alphas`` and ``betas``.

    ``step()`` adds one basis vector (one product). ``betas[j]`` couples vectors j and
    j+1; ``betas[-1]`` is the size of the residual after the last step, the quantity the
    convergence estimate |beta_m s_mi| of a Ritz pair uses.
    """

    def __init__(
        self,
        matvec: MatVec,
        dim: int,
        dtype: torch.dtype,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        start: Tensor | None = None,
        restart: bool = True,
        deflate: Tensor | None = None,
    ):
        self.matvec, self.dim, self.dtype, self.device = matvec, dim, dtype, device
        self.generator, self.restart = generator, restart
        # orthonormal rows to keep out of the Krylov space: the iteration then sees
        # (I - Y^T Y) H (I - Y^T Y) on the complement of those directions
        self.deflate = deflate
        self.space = dim - (0 if deflate is None else len(deflate))
        first = random_unit(dim, generator, dtype, device) if start is None else start
        first = self._project(first.to(dtype=dtype, device=device))
        self.basis = torch.empty(min(dim, 64), dim, dtype=dtype, device=device)
        self.basis[0] = first / first.norm()
        self.size = 1  # vectors in the basis; the last one is the next to multiply
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.scale = 0.0
        self.exhausted = False  # the whole space is spanned, or an invariant one and no restart

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def _project(self, w: Tensor) -> Tensor:
        if self.deflate is not None:
            for _ in range(2):
                w = w - self.deflate.T @ (self.deflate @ w)
        return w

    def _orthogonalise(self, w: Tensor) -> Tensor:
        q = self.basis[: self.size]
        for _ in range(2):  # twice is enough
            w = self._project(w - q.T @ (q @ w))
        return w

    def step(self) -> None:
        """One Lanczos step: multiply the newest basis vector, orthogonalise, extend."""
        if self.exhausted:
            return
        j = self.size - 1
        q = self.basis[j]
        w = self.matvec(q).to(dtype=self.dtype, device=self.device)
        alpha = float(q @ w)
        w = self._orthogonalise(w)  # removes alpha q_j and beta q_{j-1} with the rest
        beta = float(w.norm())
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha), beta)
        if self.size >= self.space:
            self.betas.append(0.0)
            self.exhausted = True
            return
        if beta <= BREAKDOWN.get(self.dtype, 1e-5) * max(self.scale, 1e-300):
            self.betas.append(0.0)
            if not self.restart:
                self.exhausted = True
                return
            # an invariant subspace: go on in its complement from a fresh direction
            w = self._orthogonalise(random_unit(self.dim, self.generator, self.dtype, self.device))
            beta_next = w / w.norm()
        else:
            self.betas.append(beta)
            beta_next = w / beta
        if self.size == len(self.basis):
            grown = torch.empty(
                min(self.dim, 2 * self.size), self.dim, dtype=self.dtype, device=self.device
            )
            grown[: self.size] = self.basis[: self.size]
            self.basis = grown
        self.basis[self.size] = beta_next
        self.size += 1

    def tridiagonal(self) -> Tensor:
        """T = Q^T H Q over the steps taken, in float64."""
        m = self.steps
        t = torch.diag(torch.tensor(self.alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.betas[: m - 1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        return t

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), the eigenvectors S of T (columns), and each pair's
        residual estimate |beta_m S[m-1, i]| (exact arithmetic: ||H y - theta y||)."""
        values, vectors = torch.linalg.eigh(self.tridiagonal())
        estimates = abs(self.betas[-1]) * vectors[-1].abs()
        return values, vectors, estimates

    def ritz_vectors(self, vectors: Tensor) -> Tensor:
        """Ritz vectors Q^T S for the columns of ``vectors`` (as rows, in the working dtype)."""
        q = self.basis[: self.steps]
        return vectors.T.to(dtype=self.dtype, device=self.device) @ q
