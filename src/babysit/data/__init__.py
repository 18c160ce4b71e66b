"""Data: sources -> train/val/test splits -> preprocessing fitted on train -> in-memory batches.

``load(spec.data)`` is the one entry point the training loop uses::

    source (sources.py)            x, y [, x_test, y_test] as numpy, validated by sources.check
    test split                     from the source, else `test_fraction` carved off (stratified for classes)
    val split                      `val_fraction` carved off the training pool (stratified for classes)
    train_size                     keep the first N of the (shuffled) training examples
    preprocessing (preprocess.py)  fitted on train only, applied to val and test

A folder of images or of ``.npy`` files larger than ``data.in_memory_limit`` is not loaded:
its splits are the same carving of indices, with ``x`` read from disk per batch and the
preprocessing fitted in one streaming pass (:mod:`babysit.data.streaming`; ``Splits.streaming``).

All carving uses seeded permutations from ``data.split_seed``, so the same spec gives the
same splits whatever the experiment's ``seed``. The
stratified carve keeps each class's share in val and test close to its share overall,
which matters for small sets such as digits or spirals.

Example
-------
>>> from babysit.config import DataSpec
>>> splits = load(DataSpec(source="spirals", samples=300, val_fraction=0.1))
>>> len(splits.train), len(splits.val), len(splits.test), splits.input_shape, splits.num_classes
(216, 24, 60, (2,), 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from babysit.config import DataSpec
from babysit.data.batching import Batches
from babysit.data.preprocess import Preprocessor
from babysit.data.sources import SOURCES, check
from babysit.data.streaming import (
    SAMPLE_EXAMPLES,
    LazyInputs,
    StreamBatches,
    StreamedSource,
    fit_preprocessor,
    streamed_source,
)
from babysit.errors import BabysitError

__all__ = ["Batches", "LazyInputs", "Preprocessor", "Split", "Splits", "StreamBatches", "batches", "holdout",
           "in_order", "load"]

# independent random streams per purpose, so e.g. changing val_fraction never moves the test set
_TEST_STREAM, _VAL_STREAM = 1, 2


@dataclass
class Split:
    """Inputs ``x`` (N, *input_shape) float32 and targets ``y``: int64 (N,) classes or float32 (N,)/(N, k).
    A streamed split's ``x`` is a :class:`~babysit.data.streaming.LazyInputs` (read when indexed)."""

    x: torch.Tensor | LazyInputs
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    @property
    def streaming(self) -> bool:
        """Whether ``x`` is read from disk as it is indexed rather than held in memory."""
        return isinstance(self.x, LazyInputs)

    def to(self, device: torch.device | str) -> Split:
        """Both tensors on ``device``, e.g. ``split.to("cuda")``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    """The three splits and what a model builder needs to know about them.

    ``val`` is None when ``val_fraction`` is 0; ``test`` is None when the source has no
    test split and ``test_fraction`` is 0. ``preprocessor`` is the fitted one, for new inputs.
    """

    train: Split
    val: Split | None
    test: Split | None
    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    target_dim: int
    class_names: list[str] | None = None
    preprocessor: Preprocessor | None = None

    @property
    def streaming(self) -> bool:
        """Whether the training inputs stream from disk (the data set is larger than ``data.in_memory_limit``)."""
        return self.train.streaming

    def bounded(self, examples: int = SAMPLE_EXAMPLES) -> Splits:
        """Itself in memory; for streamed data, in-memory splits of the first ``examples``
        examples of each split: what a whole-set check (leakage, duplicates) looks at. An index
        into them is the same example's index in the full split."""
        if not self.streaming:
            return self

        def head(split: Split | None) -> Split | None:
            return None if split is None else Split(split.x[:examples], split.y[:examples])

        return dataclasses.replace(self, train=head(self.train), val=head(self.val), test=head(self.test))

    def to(self, device: torch.device | str) -> Splits:
        """Every split on ``device``; the metadata is shared."""
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            val=None if self.val is None else self.val.to(device),
            test=None if self.test is None else self.test.to(device),
        )


def load(spec: DataSpec) -> Splits:
    """Read ``spec.source``, split it, preprocess it; returns CPU tensors.

    Test comes from the source (mnist1d, npz with ``x_test``) or is carved off by
    ``test_fraction``; val is carved off the training pool by ``val_fraction``; then
    ``train_size`` keeps the first N training examples (all of them when there are fewer).
    The preprocessing steps are fitted on the final training split only.

    Example
    -------
    >>> from babysit.config import DataSpec
    >>> splits = load(DataSpec(source="digits", train_size=100))
    >>> len(splits.train), splits.input_shape, splits.test.x.shape[1:]
    (100, (1, 8, 8), torch.Size([1, 8, 8]))
    """
    seed = spec.split_seed  # the data and its splits; the experiment's seed does not move them
    streamed = streamed_source(spec)  # None: small enough to load whole
    if streamed is not None:
        return _load_streamed(spec, streamed)
    raw = check(SOURCES[spec.source](spec, seed))
    classification = raw.task == "classification"
    x, y, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test

    if x_test is None and spec.test_fraction > 0 and not raw.tokens:
        keep, held = holdout(len(x), spec.test_fraction, _rng(seed, _TEST_STREAM),
                             y if classification else None, "data.test_fraction")
        x, y, x_test, y_test = x[keep], y[keep], x[held], y[held]

    x_val, y_val = raw.x_val, raw.y_val  # a source that splits its own (text)
    if x_val is None and spec.val_fraction > 0 and not raw.tokens:
        keep, held = holdout(len(x), spec.val_fraction, _rng(seed, _VAL_STREAM),
                             y if classification else None, "data.val_fraction")
        x, y, x_val, y_val = x[keep], y[keep], x[held], y[held]

    if spec.train_size is not None:
        x, y = x[:spec.train_size], y[:spec.train_size]
    if len(x) < 2:  # one example has no batch statistics, no gradient check, no subset to overfit
        raise BabysitError(f"data: the training split holds {len(x)} example(s); at least 2 are needed "
                           "(data.train_size, data.samples, val_fraction, test_fraction)")

    train = _split(x, y)
    # token ids are categories, not features to centre or scale: no preprocessing applies
    preprocessor = Preprocessor([] if raw.tokens else spec.preprocess).fit(train.x)

    def prepared(split: Split | None) -> Split | None:
        return None if split is None else Split(preprocessor.transform(split.x), split.y)

    return Splits(
        train=prepared(train),
        val=prepared(_split(x_val, y_val)),
        test=prepared(_split(x_test, y_test)),
        task=raw.task,
        num_classes=raw.num_classes if classification else None,
        input_shape=tuple(x.shape[1:]),
        target_dim=1 if classification or y.ndim == 1 else int(y.shape[1]),
        class_names=raw.class_names,
        preprocessor=preprocessor,
    )


def _load_streamed(spec: DataSpec, source: StreamedSource) -> Splits:
    """:func:`load` for data that stays on disk: the same carving as in memory, on indices
    (so a streamed and an in-memory load of the same files give the same splits), labels in
    memory, inputs read per batch and preprocessed by statistics fitted in one streaming pass."""
    seed = spec.split_seed
    classification = source.task == "classification"
    index, y = np.arange(len(source.y)), source.y
    test_store, test_index, y_test = source.test_store, None, source.y_test
    if test_store is not None:
        test_index = np.arange(len(test_store))
    elif spec.test_fraction > 0:
        keep, held = holdout(len(index), spec.test_fraction, _rng(seed, _TEST_STREAM),
                             y if classification else None, "data.test_fraction")
        test_store, test_index, y_test = source.store, index[held], y[held]
        index, y = index[keep], y[keep]
    val_index = y_val = None
    if spec.val_fraction > 0:
        keep, held = holdout(len(index), spec.val_fraction, _rng(seed, _VAL_STREAM),
                             y if classification else None, "data.val_fraction")
        val_index, y_val, index, y = index[held], y[held], index[keep], y[keep]
    if spec.train_size is not None:
        index, y = index[:spec.train_size], y[:spec.train_size]
    if len(index) < 2:
        raise BabysitError(f"data: the training split holds {len(index)} example(s); at least 2 are needed "
                           "(data.train_size, data.samples, val_fraction, test_fraction)")
    preprocessor = fit_preprocessor(spec.preprocess, LazyInputs(source.store, index, workers=spec.workers))

    def streamed(store, where: np.ndarray | None, labels: np.ndarray | None) -> Split | None:
        if where is None or labels is None:
            return None
        return Split(LazyInputs(store, where, preprocessor, workers=spec.workers),
                     torch.from_numpy(np.ascontiguousarray(labels)))

    return Splits(
        train=streamed(source.store, index, y),
        val=streamed(source.store, val_index, y_val),
        test=streamed(test_store, test_index, y_test),
        task=source.task,
        num_classes=source.num_classes if classification else None,
        input_shape=tuple(source.store.shape),
        target_dim=1 if classification or y.ndim == 1 else int(y.shape[1]),
        class_names=source.class_names,
        preprocessor=preprocessor,
    )


def batches(split: Split, batch_size: int | str, generator: torch.Generator | None, **shard: int
            ) -> Batches | StreamBatches:
    """The training batches of ``split``: :class:`Batches` in memory (``shard``: ``rank`` and
    ``world_size`` under torchrun), :class:`StreamBatches` for a streamed split (one process)."""
    if not split.streaming:
        return Batches(split.x, split.y, batch_size, generator, **shard)
    if shard.get("world_size", 1) > 1:
        raise BabysitError("data.in_memory_limit: data streamed from disk trains in one process; "
                           "torchrun's data-parallel shards need the data in memory (raise data.in_memory_limit)")
    return StreamBatches(split.x, split.y, batch_size, generator)


def in_order(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` of every example of ``split`` in order, ``batch_size`` at a time: slices in
    memory, or batches read by the split's DataLoader workers when it streams.

    Example
    -------
    >>> [len(yb) for _, yb in in_order(Split(torch.zeros(5, 2), torch.zeros(5)), 2)]
    [2, 2, 1]
    """
    if split.streaming:
        for start, xb in zip(range(0, len(split), batch_size), split.x.in_order(batch_size), strict=True):
            yield xb, split.y[start:start + batch_size]
        return
    for start in range(0, len(split), batch_size):
        yield split.x[start:start + batch_size], split.y[start:start + batch_size]


def holdout(n: int, fraction: float, rng: np.random.Generator, labels: np.ndarray | None = None,
            field: str = "fraction") -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..n-1 into (kept, held out) with ``round(n * fraction)`` held out.

    Both parts come in random order (a seeded permutation), so "the first N kept" is a
    random subset even when the source is sorted by class. With ``labels`` the hold-out is
    stratified: examples are ranked by their position within their own class, divided by
    the class size, and the lowest ranks are held out, so every class gives the same share.
    At least one example goes to each side when ``fraction`` > 0.

    Example
    -------
    >>> kept, held = holdout(10, 0.2, np.random.default_rng(0), labels=np.array([0] * 5 + [1] * 5))
    >>> len(kept), len(held), sorted(np.array([0] * 5 + [1] * 5)[held].tolist())
    (8, 2, [0, 1])
    """
    if n < 2:
        raise BabysitError(f"{field}: cannot hold out {fraction} of {n} example; "
                           f"need at least 2 examples or set {field}: 0")
    n_held = min(max(round(n * fraction), 1), n - 1)
    perm = rng.permutation(n)
    order = perm
    if labels is not None:
        permuted = labels[perm]
        quantile = np.empty(n)
        for c in np.unique(permuted):
            members = np.flatnonzero(permuted == c)
            quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
        order = perm[np.argsort(quantile, kind="stable")]
    held = order[:n_held]
    is_held = np.zeros(n, dtype=bool)
    is_held[held] = True
    return perm[~is_held[perm]], held


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng((seed % 2**64, stream))  # SeedSequence wants non-negative entropy


def _split(x: np.ndarray | None, y: np.ndarray | None) -> Split | None:
    if x is None:
        return None
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))

