"""Rosenblatt's perceptron on fixed features (``model.kind: perceptron``).

x (B, *input_shape) -> flatten (B, d) -> φ(x) (B, D), fixed -> Linear -> scores (B, units).

The unit predicts ``sign(wᵀφ(x) + b)`` (Rosenblatt 1958); the sign is taken by the
prediction (:func:`babysit.optim.losses.predict`), so the network outputs the scores the
perceptron rule needs. Two classes use one unit, more classes one unit per class
(one-vs-rest, predicted by the largest score); see :mod:`babysit.optim.perceptron` for the
learning rule, the stop at separation and Novikoff's bound.

The basis φ (``model.basis``) is fixed, not learned: it holds buffers, no parameters.

- ``identity``: φ(x) = x, the perceptron of the textbooks: a linear separator in input space.
- ``polynomial``: every monomial of the inputs of degree 1 to ``model.basis_degree``
  (``x_i``, ``x_i x_j``, ``x_i^2``, ...; the constant is the bias), so a degree-2 perceptron
  separates classes split by any conic (a circle inside a ring). ``C(d + p, p) - 1``
  features for d inputs and degree p; more than :data:`MAX_FEATURES` is refused.
- ``fourier``: ``model.basis_features`` random Fourier features (Rahimi & Recht 2007),
  ``φ(x) = sqrt(2/D) cos(Wx + c)`` with ``W ~ N(0, I/d)`` and ``c ~ U(0, 2π)``, so that
  ``φ(x)ᵀφ(x') ≈ exp(-||x - x'||² / 2d)``, the Gaussian kernel with length scale sqrt(d)
  (about the distance between standardised examples). W and c come from a generator seeded
  from torch's global RNG (the runner seeds it with the spec's seed), and are buffers, so a
  checkpoint carries them.

``model.hidden`` and ``model.activation`` do not apply (the perceptron has no hidden
layer and its nonlinearity is the sign of the prediction); ``model.init`` applies to the
Linear (the spec's default for this kind is ``zeros``, Rosenblatt's start).

Example
-------
>>> import torch
>>> from babysit.config import ModelSpec
>>> net = build_perceptron(ModelSpec(kind="perceptron", basis="polynomial", basis_degree=2), (3,), 1)
>>> net.basis.features, net(torch.randn(5, 3)).shape  # 3 linear + 6 quadratic monomials
(9, torch.Size([5, 1]))
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError

MAX_FEATURES = 100_000  # a polynomial basis larger than this is refused (memory: B x D floats per batch)


class IdentityBasis(nn.Module):
    """φ(x) = x."""

    def __init__(self, inputs: int):
        super().__init__()
        self.features = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PolynomialBasis(nn.Module):
    """Every monomial of degree 1 to ``degree`` of the d inputs, each once.

    Example
    -------
    >>> PolynomialBasis(2, 2)(torch.tensor([[2.0, 3.0]])).tolist()  # x1, x2, x1², x1x2, x2²
    [[2.0, 3.0, 4.0, 6.0, 9.0]]
    """

    def __init__(self, inputs: int, degree: int):
        super().__init__()
        self.degree = degree
        self.features = polynomial_features(inputs, degree)
        if self.features > MAX_FEATURES:
            raise BabysitError(
                f"model.basis_degree: a degree-{degree} polynomial of {inputs} inputs has {self.features:,} "
                f"features (more than {MAX_FEATURES:,}); lower the degree or use basis: fourier"
            )
        for k in range(2, degree + 1):
            # the input indices of each degree-k monomial, (M_k, k); fixed, so not saved in checkpoints
            combos = list(itertools.combinations_with_replacement(range(inputs), k))
            self.register_buffer(f"index_{k}", torch.tensor(combos, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x]  # degree 1
        for k in range(2, self.degree + 1):
            index = getattr(self, f"index_{k}")
            parts.append(x[:, index].prod(-1))  # (B, d) -> (B, M_k, k) -> (B, M_k)
        return torch.cat(parts, 1)  # (B, D)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, features={self.features}"


class FourierBasis(nn.Module):
    """Random Fourier features of the Gaussian kernel exp(-||x - x'||² / 2d) (Rahimi & Recht 2007).

    Example
    -------
    >>> basis = FourierBasis(2, 4096, seed=0)
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    >>> phi = basis(x)
    >>> round((phi[0] @ phi[1]).item(), 1), round(math.exp(-2.0 / 4), 1)  # ||x - x'||² = 2, d = 2
    (0.6, 0.6)
    """

    def __init__(self, inputs: int, features: int, seed: int):
        super().__init__()
        self.features = features
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", torch.randn(features, inputs, generator=generator) / math.sqrt(inputs))
        self.register_buffer("phases", 2 * math.pi * torch.rand(features, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = torch.addmm(self.phases, x, self.frequencies.T)  # (B, d) -> (B, D): Wx + c
        return math.sqrt(2.0 / self.features) * torch.cos(projected)

    def extra_repr(self) -> str:
        return f"features={self.features}"


def polynomial_features(inputs: int, degree: int) -> int:
    """The number of monomials of degree 1 to ``degree`` in ``inputs`` variables: C(d + p, p) - 1.

    Example
    -------
    >>> polynomial_features(40, 2), polynomial_features(2, 3)
    (860, 9)
    """
    return math.comb(inputs + degree, degree) - 1


class Perceptron(nn.Module):
    """A fixed basis then one linear layer of perceptron units; see the module docstring.

    Example
    -------
    >>> net = Perceptron(IdentityBasis(4), 3)
    >>> net(torch.randn(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, basis: nn.Module, units: int):
        super().__init__()
        self.basis = basis
        self.linear = nn.Linear(basis.features, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.basis(x.flatten(1)))  # (B, *shape) -> (B, d) -> (B, D) -> (B, units)


def build_perceptron(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """A :class:`Perceptron` on ``spec.basis`` for examples of ``input_shape`` (not yet initialised).

    Example
    -------
    >>> build_perceptron(ModelSpec(kind="perceptron", basis="fourier", basis_features=64), (40,), 10).basis.features
    64
    """
    for key, given, allowed in (("norm", spec.norm, "none"), ("residual", spec.residual, False),
                                ("dropout", spec.dropout, 0.0)):
        if given != allowed:
            raise BabysitError(
                f"model.{key}: does not apply to a perceptron (one layer of units on fixed features); "
                f"use {str(allowed).lower()}, got {given!r}"
            )
    inputs = math.prod(input_shape)
    if spec.basis == "polynomial":
        basis: nn.Module = PolynomialBasis(inputs, spec.basis_degree)
    elif spec.basis == "fourier":
        seed = int(torch.randint(0, 2**62, ()))  # from the global RNG, which the runner seeds
        basis = FourierBasis(inputs, spec.basis_features, seed)
    else:
        basis = IdentityBasis(inputs)
    return Perceptron(basis, output_dim)


__all__ = [
    "FourierBasis", "IdentityBasis", "Perceptron", "PolynomialBasis", "build_perceptron", "polynomial_features",
]  # fmt: skip
