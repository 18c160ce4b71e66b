"""Data augmentation on the device: random flip, padded random crop, Gaussian noise, random shift.

``data.augment: [flip, crop, noise, shift]`` names the operations; :func:`augmenter` turns the
list into one callable ``augment(xb, step) -> xb`` that the training loop applies to each
training batch where it already lies (on the GPU: no trip through the host, no worker), and
never to evaluation. Each operation draws its randomness per example in one vectorised call
(no Python loop over the batch):

- ``flip``: each image (N, C, H, W) mirrored left-right with probability 1/2;
- ``crop``: each image zero-padded by ``pad`` pixels on every side and a window of its own size
  cut at a random offset (a random translation by up to ``pad`` pixels each way);
- ``noise``: Gaussian noise of standard deviation 0.1 added to every input value;
- ``shift``: each sequence (N, C, L) or (N, L) moved by up to 1/8 of its length either way,
  the end it leaves filled with zeros.

The magnitudes follow the CIFAR recipe of He et al. 2016 ("Deep residual learning for image
recognition", section 4.2: 4 pixels of padding on each side of a 32x32 image, a random 32x32
crop, a random horizontal flip): the padding is 1/8 of the image's side (at least 1 pixel), and
a sequence shifts by up to 1/8 of its length. The inputs are preprocessed (standardised by
default), so zero padding is the training mean and the noise's 0.1 is a tenth of a feature's
spread.

Seeded and resumable: the randomness of a step comes from a generator seeded with
(``seed``, global step) alone, on the batch's device, so a run killed and resumed from its
checkpoint draws exactly what the uninterrupted run drew, with nothing more to save.

Example
-------
>>> import torch
>>> augment = augmenter(["flip", "crop"], (1, 8, 8), seed=0)
>>> x = torch.randn(5, 1, 8, 8)
>>> augment(x, step=3).shape, torch.equal(augment(x, step=3), augment(x, step=3))
(torch.Size([5, 1, 8, 8]), True)
>>> augment.describe()
'flip, crop (pad 1)'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from babysit.errors import BabysitError

AUGMENTATIONS = ("flip", "crop", "noise", "shift")
# He et al. 2016's CIFAR recipe pads a 32x32 image by 4 pixels: 1/8 of its side
CROP_PAD_FRACTION = 1 / 8
# a tenth of a standardised feature's standard deviation
NOISE_STD = 0.1
# a sequence moves by up to 1/8 of its length, the image recipe's translation in one dimension
SHIFT_FRACTION = 1 / 8
_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """The seed of ``step``'s draws: (seed, step) mixed by SplitMix64's finaliser (Steele et al.
    2014), so that neighbouring steps and neighbouring seeds give unrelated streams; below 2^63.

    Example
    -------
    >>> step_seed(0, 1) != step_seed(1, 0), step_seed(3, 7) == step_seed(3, 7)
    (True, True)
    """
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) mirrored left-right with probability 1/2.

    Example
    -------
    >>> x = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(64, 1, 1, 1)
    >>> flipped = random_flip(x, torch.Generator().manual_seed(0))
    >>> sorted({tuple(row) for row in flipped[:, 0, 0].tolist()})
    [(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)]
    """
    mirrored = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(mirrored.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def _random_windows(x: torch.Tensor, pad: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` zero-padded by ``pad`` on both sides of each of its last ``dims`` dimensions, and a
    window of the original size cut at a random offset per example (and per dimension): one
    ``gather`` per dimension."""
    n = x.shape[0]
    padded = F.pad(x, (pad, pad) * dims)
    for dim in range(x.dim() - dims, x.dim()):
        size = x.shape[dim]
        offsets = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
        index = offsets[:, None] + torch.arange(size, device=x.device)  # (N, size): the kept positions
        shape = [n if d == 0 else (size if d == dim else 1) for d in range(x.dim())]
        padded = padded.gather(dim, index.view(shape).expand(*padded.shape[:dim], size, *padded.shape[dim + 1:]))
    return padded


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) zero-padded by ``pad`` pixels and cropped back to H x W
    at a random offset: a random translation by up to ``pad`` pixels each way.

    Example
    -------
    >>> x = torch.ones(8, 3, 6, 6)
    >>> cropped = random_crop(x, 2, torch.Generator().manual_seed(0))
    >>> cropped.shape, bool((cropped.sum((1, 2, 3)) <= 3 * 36).all())
    (torch.Size([8, 3, 6, 6]), True)
    """
    return _random_windows(x, pad, 2, generator)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each sequence of ``x`` (N, C, L) or (N, L) moved by a random whole number of positions in
    [-max_shift, max_shift] along its last dimension, zeros filling the end it leaves.

    Example
    -------
    >>> x = torch.arange(1.0, 9.0).repeat(4, 1)
    >>> random_shift(x, 2, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 8])
    """
    return _random_windows(x, max_shift, 1, generator)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``std``, drawn per value.

    Example
    -------
    >>> noisy = gaussian_noise(torch.zeros(1000, 10), 0.1, torch.Generator().manual_seed(0))
    >>> round(noisy.std().item(), 2)
    0.1
    """
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class Augmenter:
    """``augment(xb, step)``: the named operations applied in turn to a training batch, with
    randomness drawn from (``seed``, ``step``) only. Build one with :func:`augmenter`."""

    def __init__(self, operations: list[tuple[str, dict[str, Any]]], seed: int):
        self.operations = operations
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}  # one per device, reseeded each step

    def generator(self, device: torch.device, step: int) -> torch.Generator:
        """The generator on ``device`` seeded for ``step``."""
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(step_seed(self.seed, step))

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        generator = self.generator(x.device, step)
        for name, options in self.operations:
            if name == "flip":
                x = random_flip(x, generator)
            elif name == "crop":
                x = random_crop(x, options["pad"], generator)
            elif name == "shift":
                x = random_shift(x, options["max_shift"], generator)
            else:
                x = gaussian_noise(x, options["std"], generator)
        return x

    def describe(self) -> str:
        """The operations and their magnitudes, as a line for a log or a report."""
        shown = []
        for name, options in self.operations:
            magnitudes = ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in options.items())
            shown.append(f"{name} ({magnitudes})" if magnitudes else name)
        return ", ".join(shown)


def augmenter(names: Sequence[str], input_shape: Sequence[int], seed: int) -> Augmenter | None:
    """The :class:`Augmenter` of ``data.augment`` for inputs of one example's ``input_shape``
    (None when ``names`` is empty). Refused in one line (a BabysitError naming ``data.augment``)
    where an operation does not fit the inputs: ``flip`` and ``crop`` take images (C, H, W),
    ``shift`` takes sequences (C, L) or (L,) of at least 8 positions.

    Example
    -------
    >>> augmenter(["shift", "noise"], (40,), seed=1).describe()
    'shift (max shift 5), noise (std 0.1)'
    >>> augmenter(["flip"], (40,), seed=1)
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: data.augment: flip takes images (C, H, W), but one example here has shape (40,)
    """
    shape = tuple(int(s) for s in input_shape)
    operations: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        if name not in AUGMENTATIONS:
            raise BabysitError(f"data.augment: unknown operation {name!r}; choose from {', '.join(AUGMENTATIONS)}")
        if name in ("flip", "crop") and len(shape) != 3:
            raise BabysitError(f"data.augment: {name} takes images (C, H, W), but one example here has shape {shape}")
        if name == "shift" and len(shape) not in (1, 2):
            raise BabysitError(f"data.augment: shift takes sequences (C, L) or (L,), but one example here has shape "
                               f"{shape}")
        if name == "flip":
            operations.append((name, {}))
        elif name == "crop":
            operations.append((name, {"pad": max(1, int(min(shape[1:]) * CROP_PAD_FRACTION))}))
        elif name == "shift":
            max_shift = int(shape[-1] * SHIFT_FRACTION)
            if max_shift < 1:
                raise BabysitError(f"data.augment: shift moves a sequence by up to 1/8 of its length, but these have "
                                   f"{shape[-1]} positions (fewer than 8: nothing to shift)")
            operations.append((name, {"max_shift": max_shift}))
        else:
            operations.append((name, {"std": NOISE_STD}))
    return Augmenter(operations, seed) if operations else None


__all__ = ["AUGMENTATIONS", "Augmenter", "augmenter", "gaussian_noise", "random_crop", "random_flip", "random_shift",
           "step_seed"]
