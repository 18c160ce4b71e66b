"""Mini-batches from tensors already in memory, without a DataLoader.

Small datasets (MNIST-1D, digits, spirals) fit on the device whole, so a DataLoader's
workers, collation and per-example indexing are pure overhead. Each epoch here costs one
``torch.randperm`` and one gather ``x[perm]``; every batch after that is a contiguous
slice, i.e. a view with no copy.

Randomness comes only from the caller's ``torch.Generator``. The training loop checkpoints
that generator, so a resumed run replays exactly the batches it would have seen.

Example
-------
>>> import torch
>>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
>>> batches = Batches(x, y, batch_size=4, generator=torch.Generator().manual_seed(0))
>>> len(batches), [len(yb) for _, yb in batches]
(3, [4, 4, 2])
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


class Batches:
    """Shuffled (or ordered) mini-batches of ``(x, y)``; iterate once per epoch.

    ``batch_size`` is a positive int or ``'full'`` (one batch of everything: full-batch
    gradient descent, drawn without shuffling since order cannot matter). A batch size of
    ``len(x)`` or more is the same as ``'full'``. The last batch may be smaller (no drop_last).

    Example
    -------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> full = Batches(torch.zeros(5, 2), torch.zeros(5), "full", g)
    >>> len(full), next(iter(full))[0].shape
    (1, torch.Size([5, 2]))
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int | str,
                 generator: torch.Generator | None, shuffle: bool = True):
        if len(x) != len(y):
            raise ValueError(f"Batches: x has {len(x)} examples but y has {len(y)}")
        if batch_size != "full" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"Batches: batch_size must be a positive int or 'full', got {batch_size!r}")
        self.x, self.y = x, y
        self.n = len(x)
        full = self.n if batch_size == "full" else min(int(batch_size), self.n)
        self.batch_size = max(full, 1)  # an empty dataset yields no batches rather than failing
        self.generator = generator
        self.shuffle = shuffle

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) if self.n else 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.x, self.y
        if self.shuffle and len(self) > 1:
            # randperm must run on the generator's device; a CPU generator with CUDA data
            # (the usual, checkpointable choice) costs one n-element index copy per epoch.
            device = self.generator.device if self.generator is not None else x.device
            perm = torch.randperm(self.n, generator=self.generator, device=device).to(x.device)
            x, y = x[perm], y[perm]  # one gather per epoch; batches below are views
        for start in range(0, self.n, self.batch_size):
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]
