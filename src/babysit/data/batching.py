"""Mini-batches from tensors already in memory, without a DataLoader.

Small datasets (MNIST-1D, digits, spirals) fit on the device whole, so a DataLoader's
workers, collation and per-example indexing are pure overhead. Each epoch here costs one
``torch.randperm`` and one gather ``x[perm]``; every batch after that is a contiguous
slice, i.e. a view with no copy.

Randomness comes only from the caller's ``torch.Generator``. The training loop checkpoints
that generator, so a resumed run replays exactly the batches it would have seen. Data too
large for memory has the same batches read from disk: :class:`babysit.data.streaming.StreamBatches`.

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

from babysit.errors import BabysitError


def batch_length(n_x: int, n_y: int, batch_size: int | str, owner: str) -> int:
    """The examples of one batch of ``n_x`` inputs and ``n_y`` targets: ``batch_size``, at
    most all of them (``'full'``: all), and 1 for an empty set (which yields no batches rather
    than failing); a mismatch or a bad size is a ValueError naming ``owner``.

    >>> batch_length(10, 10, "full", "Batches"), batch_length(10, 10, 4, "Batches")
    (10, 4)
    """
    if n_x != n_y:
        raise ValueError(f"{owner}: x has {n_x} examples but y has {n_y}")
    if batch_size != "full" and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"{owner}: batch_size must be a positive int or 'full', got {batch_size!r}")
    return max(n_x if batch_size == "full" else min(int(batch_size), n_x), 1)


class Batches:
    """Shuffled (or ordered) mini-batches of ``(x, y)``; iterate once per epoch.

    ``batch_size`` is a positive int or ``'full'`` (one batch of everything: full-batch
    gradient descent, drawn without shuffling since order cannot matter). A batch size of
    ``len(x)`` or more is the same as ``'full'``. The last batch may be smaller (no drop_last).

    With ``world_size`` > 1 (data-parallel training, :mod:`babysit.train.distributed`) this is
    rank ``rank``'s shard: every rank draws the same permutation from an identically seeded
    generator, so global batch k holds the same ``batch_size`` examples as in one process,
    and each rank yields its equal ``batch_size / world_size`` slice of it. The last global
    batch is split evenly as well; the fewer than ``world_size`` examples left over are
    skipped that epoch (so every rank's loss is a mean over the same number of examples and
    DDP's gradient average is the global batch's gradient).

    Example
    -------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> full = Batches(torch.zeros(5, 2), torch.zeros(5), "full", g)
    >>> len(full), next(iter(full))[0].shape
    (1, torch.Size([5, 2]))
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int | str,
                 generator: torch.Generator | None, shuffle: bool = True, *, rank: int = 0, world_size: int = 1):
        if getattr(x, "streamed", False):  # a LazyInputs: x[perm] below would read the whole set into memory
            raise BabysitError("data.in_memory_limit: this command needs the training split in memory, and the "
                               "data set is larger than data.in_memory_limit; raise it (or train with babysit train)")
        self.x, self.y = x, y
        self.n = len(x)
        self.batch_size = batch_length(len(x), len(y), batch_size, "Batches")
        self.generator = generator
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        # the current epoch's example order (indices into x, in the order batches are yielded;
        # None: 0..n-1) and this process's batch length: see batch_indices
        self.order: Tensor | None = None
        self._per = self.batch_size
        if world_size > 1:
            if batch_size != "full" and self.batch_size % world_size:
                raise ValueError(f"Batches: batch_size {self.batch_size} does not divide over {world_size} ranks")
            if self.n < world_size:
                raise ValueError(f"Batches: {self.n} examples cannot be shared by {world_size} ranks")

    def __len__(self) -> int:
        if self.world_size > 1:  # a last batch smaller than the number of ranks is skipped
            return self.n // self.batch_size + (self.n % self.batch_size >= self.world_size)
        return math.ceil(self.n / self.batch_size) if self.n else 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.world_size > 1:
            yield from self._shard()
            return
        x, y = self.x, self.y
        self.order, self._per = None, self.batch_size
        if self.shuffle and len(self) > 1:
            # randperm must run on the generator's device; a CPU generator with CUDA data
            # (the usual, checkpointable choice) costs one n-element index copy per epoch.
            device = self.generator.device if self.generator is not None else x.device
            perm = torch.randperm(self.n, generator=self.generator, device=device).to(x.device)
            x, y = x[perm], y[perm]  # one gather per epoch; batches below are views
            self.order = perm
        for start in range(0, self.n, self.batch_size):
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]

    def batch_indices(self, i: int) -> Tensor:
        """The indices (into ``x`` / ``y``) of the examples of batch ``i`` of the epoch being
        (or last) iterated: the training loop names the examples of a spiked batch with it. It
        keeps the epoch's permutation, which it draws anyway: nothing per batch.

        Example
        -------
        >>> x, y = torch.arange(6.0).unsqueeze(1), torch.arange(6)
        >>> batches = Batches(x, y, 4, torch.Generator().manual_seed(0))
        >>> xb, _ = list(batches)[1]
        >>> bool((x[batches.batch_indices(1)] == xb).all())
        True
        """
        if i < 0:
            raise IndexError(f"Batches.batch_indices: batch {i}")
        start, stop = i * self._per, (i + 1) * self._per
        if self.order is None:
            return torch.arange(start, min(stop, self.n), device=self.x.device)
        return self.order[start:stop]

    def _shard(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's slice of every global batch: one gather of its examples per epoch,
        contiguous views after that."""
        n, size, rank, ranks = self.n, self.batch_size, self.rank, self.world_size
        full, rest = divmod(n, size)
        if self.shuffle and (n > size or n % ranks):  # the same permutation as one process draws
            device = self.generator.device if self.generator is not None else self.x.device
            order = torch.randperm(n, generator=self.generator, device=device).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        per, last = size // ranks, rest // ranks  # per-rank examples of a full / of the last batch
        # (full, size) -> this rank's columns (full, per), then its part of the last batch
        mine = torch.cat([order[:full * size].view(full, size)[:, rank * per:(rank + 1) * per].reshape(-1),
                          order[full * size + rank * last:full * size + (rank + 1) * last]])
        x, y = self.x[mine], self.y[mine]
        self.order, self._per = mine, per
        for start in range(0, full * per, per):
            yield x[start:start + per], y[start:start + per]
        if last:
            yield x[full * per:], y[full * per:]
