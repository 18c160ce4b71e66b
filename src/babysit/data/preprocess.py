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

import math
from collections.abc import Iterable, Sequence

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

    def fit_streamed(self, chunks: Iterable[torch.Tensor], input_shape: Sequence[int]) -> Preprocessor:
        """:meth:`fit` in one pass over training inputs that come a chunk at a time (data streamed
        from disk, :mod:`babysit.data.streaming`): each chunk (B, *input_shape) adds to running
        float64 means and centred second moments (:class:`Moments`; the full D x D ones only when
        a whitening step needs them), and every step is then fitted from those moments, carried
        through the steps before it (each step is affine: z -> (z - shift) W). The result equals
        :meth:`fit` on all the chunks at once up to float64 rounding (tests/test_streaming.py).

        Example
        -------
        >>> x = torch.randn(100, 3)
        >>> whole = Preprocessor(["standardize"]).fit(x).fitted[0][1]
        >>> streamed = Preprocessor(["standardize"]).fit_streamed(x.split(32), (3,)).fitted[0][1]
        >>> torch.allclose(whole, streamed, rtol=1e-12)
        True
        """
        features = math.prod(input_shape)
        whiten = any(s.endswith("_whiten") for s in self.steps)
        if whiten and features > MAX_WHITEN_FEATURES:
            raise BabysitError(f"data.preprocess: whitening {features} features needs a {features}x{features} "
                               f"covariance; it is limited to {MAX_WHITEN_FEATURES} features, use standardize")
        moments = Moments(full=whiten)
        if self.steps:
            for chunk in chunks:
                moments.add(chunk.reshape(len(chunk), -1).to(torch.float64))  # (B, *shape) -> (B, D)
        return self.fit_moments(moments, channels=input_shape[0] if len(input_shape) == 3 else None)

    def fit_moments(self, moments: Moments, channels: int | None = None) -> Preprocessor:
        """Fit the steps from the training inputs' :class:`Moments` (``channels``: images of that
        many channels, standardised per channel as :meth:`fit` does)."""
        self.fitted = []
        if not self.steps:
            return self
        if moments.count < 1:
            raise ValueError("Preprocessor.fit_moments: no training examples")
        count, mean, m2 = moments.count, moments.mean, moments.m2  # m2: (D,) or (D, D)
        for step in self.steps:
            variance = (m2.diagonal() if m2.ndim == 2 else m2) / max(count - 1, 1)
            if step == "center":
                shift, weight = mean, None
            elif step == "standardize" and channels is not None:
                pixels = len(mean) // channels  # pooled over a channel's pixels: (C, P) -> (C,)
                pixel_mean = mean.reshape(channels, pixels)
                channel_mean = pixel_mean.mean(1)
                channel_m2 = ((variance * max(count - 1, 1)).reshape(channels, pixels)
                              + count * (pixel_mean - channel_mean[:, None]).pow(2)).sum(1)
                std = (channel_m2 / max(count * pixels - 1, 1)).sqrt()
                shift, weight = (t.repeat_interleave(pixels) for t in _standardized(channel_mean, std))
            elif step == "standardize":
                shift, weight = _standardized(mean, variance.sqrt())
            else:
                eigenvalues, u = _eigh(m2 / max(count - 1, 1))
                shift, weight = _whitened(mean, eigenvalues, u, self.eps, zca=step == "zca_whiten")
            self.fitted.append((shift, weight))
            # the moments of this step's output: z' = (z - shift) W
            mean = _apply(mean[None], shift, weight)[0]
            if weight is not None and weight.ndim == 1:
                m2 = m2 * (weight[:, None] * weight[None, :] if m2.ndim == 2 else weight.pow(2))
            elif weight is not None:
                m2 = weight.T @ m2 @ weight
        return self

    def to(self, device: torch.device | str) -> Preprocessor:
        """A copy whose fitted statistics live on ``device`` (to apply them to batches there)."""
        moved = Preprocessor(self.steps, self.eps)
        if self.fitted is not None:
            moved.fitted = [(shift.to(device), None if weight is None else weight.to(device))
                            for shift, weight in self.fitted]
        return moved

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


class Moments:
    """Count, mean (D,) and centred second moments M2 = sum (z - mean)^2 of the rows seen so far,
    per feature (D,) or, with ``full``, as the (D, D) matrix of cross-products; float64. Chunks
    merge with the pairwise update of Chan, Golub & LeVeque (1979), which stays accurate where the
    textbook sum-of-squares formula cancels.

    Example
    -------
    >>> z = torch.randn(50, 2, dtype=torch.float64)
    >>> m = Moments(full=True)
    >>> for chunk in z.split(16):
    ...     m.add(chunk)
    >>> torch.allclose(m.m2 / 49, torch.cov(z.T))
    True
    """

    def __init__(self, full: bool = False):
        self.full = full
        self.count = 0
        self.mean = torch.zeros(0, dtype=torch.float64)
        self.m2 = torch.zeros(0, dtype=torch.float64)

    def add(self, z: torch.Tensor) -> None:
        """Merge a chunk of rows (B, D)."""
        n_b = len(z)
        if n_b == 0:
            return
        z = z.to(torch.float64)
        mean_b = z.mean(0)
        centered = z - mean_b
        m2_b = centered.T @ centered if self.full else centered.pow(2).sum(0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        spread = torch.outer(delta, delta) if self.full else delta.pow(2)
        self.m2 = self.m2 + m2_b + spread * (n_a * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.count = n


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending, clamped at 0) and eigenvectors (columns) of a covariance."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return eigenvalues.clamp_min(0.0), eigenvectors


def _covariance_eigh(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, eigenvalues (ascending, clamped at 0) and eigenvectors (columns) of the covariance."""
    mean = z.mean(0)
    centered = z - mean
    cov = centered.T @ centered / max(len(z) - 1, 1)  # (D, D), unbiased like numpy.cov
    return mean, *_eigh(cov)


def _standardized(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) of standardisation; a feature constant on the training split is only centred."""
    constant = std <= STD_FLOOR * mean.abs().clamp_min(1.0)
    return mean, torch.where(constant, torch.ones_like(std), 1.0 / std)


def _whitened(mean: torch.Tensor, eigenvalues: torch.Tensor, u: torch.Tensor, eps: float,
              zca: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pca = u / torch.sqrt(eigenvalues + eps)  # U diag(1/sqrt(l+eps)): column k scaled
    if not zca:
        return mean, pca
    w = pca @ u.T  # U diag(1/sqrt(l+eps)) U^T
    return mean, (w + w.T) / 2  # symmetric in exact arithmetic; make it so in floating point


def fit_center(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, None]:
    return z.mean(0), None


def fit_standardize(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(0)
    std = ((z - mean).pow(2).sum(0) / max(len(z) - 1, 1)).sqrt()
    return _standardized(mean, std)


def fit_standardize_channels(z: torch.Tensor, channels: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_standardize` with one mean and std per channel of images flattened to
    (N, C*H*W): every pixel of a channel gets its channel's."""
    per_channel = z.reshape(len(z), channels, -1).transpose(0, 1).reshape(channels, -1)  # (C, N*H*W)
    mean, scale = fit_standardize(per_channel.T, eps)
    pixels = z.shape[1] // channels
    return mean.repeat_interleave(pixels), scale.repeat_interleave(pixels)


def fit_pca_whiten(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _whitened(*_covariance_eigh(z), eps, zca=False)


def fit_zca_whiten(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _whitened(*_covariance_eigh(z), eps, zca=True)


_FIT = {
    "center": fit_center,
    "standardize": fit_standardize,
    "pca_whiten": fit_pca_whiten,
    "zca_whiten": fit_zca_whiten,
}
