"""Input preprocessing: centering, standardization, PCA and ZCA whitening, fitted on train only.

Reference: CS231n, "Neural Networks Part 2: Setting up the Data and the Loss", section
*Data Preprocessing*. Each step works on flattened features (N, D) and reshapes back, so
images keep their (C, H, W) shape. Statistics come from the training split alone and are
then applied unchanged to validation and test data; fitting them on val/test would leak
those sets into training (the "common pitfall" CS231n warns about).

- ``center``: x - mean
- ``standardize``: (x - mean) / std, per feature; a feature constant on the training split is
  only centred (scale 1, as scikit-learn's StandardScaler does): dividing by its ~0 std would
  blow up any other value it takes in validation or test data. Images (N, C, H, W) are
  standardised per channel, with one mean and std for all the pixels of a channel (as
  torchvision's ``Normalize``): per pixel, a pixel that is nearly constant on the training
  split (a digit's border) is divided by a tiny std, and a held-out image that uses it is
  mapped far outside anything the network saw (digits: a test pixel at 87 training stds, and
  a test loss 3x the validation loss)
- ``pca_whiten``: rotate into the covariance eigenbasis U and divide by sqrt(eigenvalue + eps):
  (x - mean) @ U diag(1/sqrt(l + eps))
- ``zca_whiten``: PCA-whiten then rotate back, W = U diag(1/sqrt(l + eps)) U^T (Bell & Sejnowski 1997);
  the result stays closest to the original inputs among all whitening transforms.

Covariances use the unbiased 1/(N-1) normalization, as ``numpy.cov`` and ``torch.cov`` do.

Example
-------
>>> import torch
>>> x = torch.randn(500, 3) @ torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.1]])
>>> z = Preprocessor(["zca_whiten"]).fit(x).transform(x)
>>> torch.allclose(torch.cov(z.T), torch.eye(3), atol=1e-2)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from babysit.errors import BabysitError

STEPS = ("center", "standardize", "pca_whiten", "zca_whiten")
STD_FLOOR = 1e-6  # relative to the feature's magnitude: below it a feature counts as constant
MAX_WHITEN_FEATURES = 4096  # whitening builds a D x D covariance; beyond this it is memory, not math


class Preprocessor:
    """Steps from ``data.preprocess``, applied in order, each fitted on the previous step's output.

    Example
    -------
    >>> import torch
    >>> pre = Preprocessor(["standardize"]).fit(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    >>> pre.transform(torch.tensor([[1.0, 5.0]]))  # the constant second feature is only centred
    tensor([[0., 4.]])
    """

    def __init__(self, steps: Sequence[str], eps: float = 1e-5):
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise BabysitError(f"data.preprocess: unknown step '{unknown[0]}'; allowed: {', '.join(STEPS)}")
        self.steps = list(steps)
        self.eps = eps
        # one (shift, weight) per step; weight is a (D,) scale, a (D, D) matrix, or None (shift only)
        self.fitted: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def __repr__(self) -> str:
        return f"Preprocessor({self.steps}, eps={self.eps})"

    def fit(self, x: torch.Tensor) -> Preprocessor:
        """Learn each step's statistics from training inputs ``x`` of shape (N, *input_shape)."""
        z = x.reshape(len(x), -1).to(torch.float64)  # (N, *shape) -> (N, D); statistics in float64
        if any(s.endswith("_whiten") for s in self.steps) and z.shape[1] > MAX_WHITEN_FEATURES:
            raise BabysitError(f"data.preprocess: whitening {z.shape[1]} features needs a {z.shape[1]}x{z.shape[1]} "
                               f"covariance; it is limited to {MAX_WHITEN_FEATURES} features, use standardize")
        self.fitted = []
        channels = x.shape[1] if x.dim() == 4 else None  # images: standardised per channel
        for step in self.steps:
            if step == "standardize" and channels is not None:
                shift, weight = fit_standardize_channels(z, channels, self.eps)
            else:
                shift, weight = _FIT[step](z, self.eps)
            self.fitted.append((shift, weight))
            z = _apply(z, shift, weight)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the fitted steps to ``x`` (N, *input_shape); returns the same shape and dtype."""
        if self.fitted is None:
            raise RuntimeError("Preprocessor.transform called before fit")
        if not self.fitted:
            return x
        z = x.reshape(len(x), -1).to(torch.float64)
        for shift, weight in self.fitted:
            z = _apply(z, shift.to(z.device), None if weight is None else weight.to(z.device))
        return z.to(x.dtype).reshape(x.shape)

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.fit(x).transform(x)

    def inverse_transform(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`: preprocessed values (N, *input_shape) back to the data's own
        units (pixels to draw a reconstruction or a generated image in). Whitening is undone
        with the pseudo-inverse of its matrix, exact for the directions it kept.

        Example
        -------
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
        >>> pre = Preprocessor(["standardize"]).fit(x)
        >>> torch.allclose(pre.inverse_transform(pre.transform(x)), x, atol=1e-6)
        True
        """
        if self.fitted is None:
            raise RuntimeError("Preprocessor.inverse_transform called before fit")
        if not self.fitted:
            return z
        x = z.reshape(len(z), -1).to(torch.float64)
        for shift, weight in reversed(self.fitted):
            if weight is not None:
                weight = weight.to(x.device)
                x = x / weight if weight.ndim == 1 else x @ torch.linalg.pinv(weight)
            x = x + shift.to(x.device)
        return x.to(z.dtype).reshape(z.shape)


def _apply(z: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    z = z - shift
    if weight is None:
        return z
    return z * weight if weight.ndim == 1 else z @ weight  # (N, D) * (D,) or (N, D) @ (D, D)


def _covariance_eigh(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, eigenvalues (ascending, clamped at 0) and eigenvectors (columns) of the covariance."""
    mean = z.mean(0)
    centered = z - mean
    cov = centered.T @ centered / max(len(z) - 1, 1)  # (D, D), unbiased like numpy.cov
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return mean, eigenvalues.clamp_min(0.0), eigenvectors


def fit_center(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, None]:
    return z.mean(0), None


def fit_standardize(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(0)
    std = ((z - mean).pow(2).sum(0) / max(len(z) - 1, 1)).sqrt()
    constant = std <= STD_FLOOR * mean.abs().clamp_min(1.0)
    return mean, torch.where(constant, torch.ones_like(std), 1.0 / std)


def fit_standardize_channels(z: torch.Tensor, channels: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_standardize` with one mean and std per channel of images flattened to
    (N, C*H*W): every pixel of a channel gets its channel's."""
    per_channel = z.reshape(len(z), channels, -1).transpose(0, 1).reshape(channels, -1)  # (C, N*H*W)
    mean, scale = fit_standardize(per_channel.T, eps)
    pixels = z.shape[1] // channels
    return mean.repeat_interleave(pixels), scale.repeat_interleave(pixels)


def fit_pca_whiten(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean, eigenvalues, u = _covariance_eigh(z)
    return mean, u / torch.sqrt(eigenvalues + eps)  # U diag(1/sqrt(l+eps)): column k scaled


def fit_zca_whiten(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean, eigenvalues, u = _covariance_eigh(z)
    w = (u / torch.sqrt(eigenvalues + eps)) @ u.T  # U diag(1/sqrt(l+eps)) U^T
    return mean, (w + w.T) / 2  # symmetric in exact arithmetic; make it so in floating point


_FIT = {
    "center": fit_center,
    "standardize": fit_standardize,
    "pca_whiten": fit_pca_whiten,
    "zca_whiten": fit_zca_whiten,
}
