"""Data larger than memory: examples read from disk batch by batch, through a DataLoader.

A folder of images (``source: folder``) or of ``.npy`` files (``source: npz`` with a folder
as its path; memory-mapped) whose examples would take more than ``data.in_memory_limit``
bytes as float32 is not loaded whole. :func:`streamed_source` decides that from headers alone
(the first image's size times the number of images; the .npy headers' shapes), and
:func:`babysit.data.load` then builds splits whose ``y`` is an in-memory label tensor and whose
``x`` is a :class:`LazyInputs`: indexing it (``x[a:b]``, ``x[index_tensor]``) reads those
examples, preprocesses them on the split's device and returns a tensor, so code that slices a
split (evaluation, the preflight's first examples) works unchanged. The preprocessing is fitted
in one streaming pass over the training split (:meth:`Preprocessor.fit_streamed`).

Training batches come from :class:`StreamBatches`, the streamed
:class:`~babysit.data.batching.Batches`: the same permutation drawn from the same checkpointed
generator (so ``--resume`` replays the same batches, and an in-memory run of the same data sees
the same batches), read by ``data.workers`` DataLoader processes, into pinned memory when the
split lives on a CUDA device.

Whole-set checks (leakage, the held-out range) look at the first :data:`SAMPLE_EXAMPLES`
examples of a streamed split (:func:`bounded`); what needs every example in memory at once
(the label-noise refits, data-parallel shards) is refused in one line by the run.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> from babysit.config import DataSpec
>>> from babysit.data import load
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> np.save(root / "x.npy", np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32))
>>> np.save(root / "y.npy", np.arange(300) % 3)
>>> splits = load(DataSpec(source="npz", path=str(root), in_memory_limit=0))
>>> splits.streaming, type(splits.train.x).__name__, splits.train.x[:5].shape
(True, 'LazyInputs', torch.Size([5, 4]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from babysit.config import DataSpec
from babysit.data.batching import batch_length
from babysit.data.preprocess import Preprocessor
from babysit.data.raw import RawData
from babysit.data.sources import (
    GRAY_MODES,
    MAX_IMAGE_PIXELS,
    _npz_arrays,
    check,
    image_files,
    image_pixels,
    npy_arrays,
)
from babysit.errors import BabysitError

# Whole-set checks on a streamed split (leakage, duplicates, the held-out range) look at its
# first this many examples: the leakage search's pairwise cosines are O(N^2 D), and 4096
# examples of a 32x32x3 image are 50 MB as float32, a bounded cost whatever the data set's size.
SAMPLE_EXAMPLES = 4096
READ_CHUNK = 512  # examples a read of the preprocessing pass and of in-order evaluation brings in
FLOAT32_BYTES = 4


class ExampleStore(Protocol):
    """Where streamed examples live: ``len``, the per-example ``shape`` and ``read(indices)``
    -> float32 (B, *shape) as numpy. Picklable, for DataLoader worker processes."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray: ...


class ImageFiles:
    """Image files decoded on demand, each to (C, H, W) float32 in [0, 1] exactly as
    :func:`babysit.data.sources.folder` decodes them (``mode`` 'L': C = 1, 'RGB': C = 3)."""

    def __init__(self, paths: Sequence[Path], mode: str, size: tuple[int, int]):
        self.paths, self.mode = list(paths), mode
        width, height = size
        self.shape = (1 if mode == "L" else 3, height, width)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        out = np.empty((len(indices), *self.shape), dtype=np.float32)
        for k, i in enumerate(indices.tolist()):
            path = self.paths[i]
            try:
                with Image.open(path) as image:
                    pixels = image_pixels(image, self.mode)  # (H, W) or (H, W, 3)
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
                raise BabysitError(f"{path}: not a readable image") from None
            if pixels.shape[:2] != self.shape[1:]:
                raise BabysitError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]}, but the folder's "
                                   f"images are {self.shape[2]}x{self.shape[1]}; all images must share one size")
            out[k] = pixels if self.mode == "L" else pixels.transpose(2, 0, 1)
        return out


class MappedArray:
    """The rows of a memory-mapped ``.npy`` file (``np.load(mmap_mode="r")``), read as float32;
    a 1-D array is one feature per example. Pickles as its path: each worker maps the file itself."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._array: np.ndarray | None = None
        rows = self.array.shape
        self.rows = rows[0]
        self.shape = tuple(rows[1:]) or (1,)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return self.rows

    def read(self, indices: np.ndarray) -> np.ndarray:
        order = np.argsort(indices, kind="stable")  # ascending reads: sequential on disk
        rows = np.empty((len(indices), *self.array.shape[1:]), dtype=np.float32)
        rows[order] = self.array[indices[order]]
        return rows.reshape(len(indices), *self.shape)

    def check_finite(self, where: str, name: str) -> None:
        """The NaN / inf check :func:`~babysit.data.sources.check` makes, a chunk at a time."""
        if not np.issubdtype(self.array.dtype, np.floating):
            return
        nan = inf = 0
        step = max(1, 2**24 // max(1, math.prod(self.shape)))  # about 64 MB of float32 a chunk
        for start in range(0, self.rows, step):
            chunk = np.asarray(self.array[start:start + step])
            nan, inf = nan + int(np.isnan(chunk).sum()), inf + int(np.isinf(chunk).sum())
        if nan or inf:
            raise BabysitError(f"{where}: array '{name}' has {nan} NaN and {inf} inf values; remove or impute them")


@dataclass
class StreamedSource:
    """A data set that stays on disk: its examples' stores (the training pool's, and the
    source's own test split's when it has one) and their labels, checked as
    :func:`~babysit.data.sources.check` checks in-memory data."""

    store: ExampleStore
    y: np.ndarray
    test_store: ExampleStore | None
    y_test: np.ndarray | None
    task: str
    num_classes: int | None
    class_names: list[str] | None
    where: str
    size_bytes: int  # the float32 examples' size, which decided to stream


def float32_bytes(examples: int, shape: Sequence[int]) -> int:
    """What ``examples`` of ``shape`` take in memory as float32.

    Example
    -------
    >>> float32_bytes(20_000, (1, 28, 28))
    62720000
    """
    return examples * math.prod(shape) * FLOAT32_BYTES


def streamed_source(spec: DataSpec) -> StreamedSource | None:
    """The streamed form of ``spec``'s data when it is larger than ``data.in_memory_limit``,
    else None (load it whole). Only an image folder and a folder of .npy files can stream."""
    if spec.source == "folder":
        return _image_folder(spec)
    if spec.source == "npz" and spec.path and Path(spec.path).is_dir():
        return _npy_folder(spec)
    return None


def _image_folder(spec: DataSpec) -> StreamedSource | None:
    from PIL import Image, UnidentifiedImageError

    root = Path(spec.path or "")
    files, class_dirs = image_files(root)

    def header(path: Path) -> tuple[tuple[int, int], str]:
        if not path.is_file():
            raise BabysitError(f"{path}: not a regular file")
        try:
            with Image.open(path) as image:  # the header only: nothing is decoded
                size, mode = image.size, image.mode
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            raise BabysitError(f"{path}: not a readable image") from None
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise BabysitError(f"{path}: image is {size[0]}x{size[1]}, larger than {MAX_IMAGE_PIXELS:,} pixels; "
                               "babysit trains on small images")
        return size, mode

    size, mode = header(files[0][0])
    estimate = float32_bytes(len(files), (1 if mode in GRAY_MODES else 3, size[1], size[0]))
    if estimate <= spec.in_memory_limit:
        return None
    gray = mode in GRAY_MODES
    for path, _ in files[1:]:  # every header, so a bad file is one line now and not mid-training
        other, other_mode = header(path)
        if other != size:
            raise BabysitError(f"{path}: image is {other[0]}x{other[1]}, but {files[0][0]} is {size[0]}x{size[1]}; "
                               "all images must share one size")
        gray = gray and other_mode in GRAY_MODES
    store = ImageFiles([p for p, _ in files], "L" if gray else "RGB", size)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return StreamedSource(store, labels, None, None, "classification", len(class_dirs),
                          [d.name for d in class_dirs], str(root), float32_bytes(len(store), store.shape))


def _npy_folder(spec: DataSpec) -> StreamedSource | None:
    root = Path(spec.path or "")
    arrays = npy_arrays(root)
    x, x_test = arrays.get("x"), arrays.get("x_test")
    estimate = sum(float32_bytes(len(a), a.shape[1:]) for a in (x, x_test) if a is not None and a.ndim)
    if estimate <= spec.in_memory_limit:
        return None
    raw = _npz_arrays(arrays, root)  # the labels' rules (string names, regression) of an in-memory npz
    where = raw.where
    stores = {name: MappedArray(root / f"{name}.npy") for name in ("x", "x_test") if name in arrays}
    for name, store in stores.items():
        if len(store) == 0:
            raise BabysitError(f"{where}: empty data, '{name}' has no examples")
        store.check_finite(where, name)
    if "x_test" in stores and stores["x_test"].shape != stores["x"].shape:
        raise BabysitError(f"{where}: 'x_test' examples have shape {stores['x_test'].shape}, "
                           f"but 'x' examples have {stores['x'].shape}")

    def stand_in(name: str) -> np.ndarray | None:  # x's length without its values: check judges the labels
        return None if name not in stores else np.broadcast_to(np.float32(0), (len(stores[name]), 1))

    labels = check(RawData(stand_in("x"), raw.y, stand_in("x_test"), raw.y_test, task=raw.task,
                           num_classes=raw.num_classes, class_names=raw.class_names, where=where))
    return StreamedSource(stores["x"], labels.y, stores.get("x_test"), labels.y_test, labels.task,
                          labels.num_classes, labels.class_names, where, estimate)


# --------------------------------------------------------------------------- reading


class _Rows(Dataset):
    """The examples of ``store`` at ``index[positions]``: one item is a whole batch (the
    DataLoader's sampler yields position tensors), read as one float32 tensor (B, *shape)."""

    def __init__(self, store: ExampleStore, index: np.ndarray):
        self.store, self.index = store, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, positions: Tensor) -> Tensor:
        return torch.from_numpy(self.store.read(self.index[positions.numpy()]))


class _Chunks:
    """The sampler of a persistent DataLoader: the current epoch's batches of positions."""

    def __init__(self) -> None:
        self.chunks: list[Tensor] = []

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def _loader(store: ExampleStore, index: np.ndarray, sampler: Any, workers: int, pin: bool,
            persistent: bool = True) -> DataLoader:
    # its own generator: the loader's seed draw must leave the global RNG (dropout, noise) as it was
    return DataLoader(_Rows(store, index), batch_size=None, sampler=sampler, num_workers=workers,
                      pin_memory=pin, persistent_workers=persistent and workers > 0,
                      generator=torch.Generator().manual_seed(0))


class LazyInputs:
    """The ``x`` of a streamed split: examples ``index`` of ``store``, read when indexed.

    ``x[i]``, ``x[a:b]``, ``x[index_tensor]`` and ``x[mask]`` return a float32 tensor on
    ``device``, preprocessed by ``preprocessor`` there (and in ``memory_format`` for images,
    channels_last on CUDA); ``len``, ``.shape``, ``.dim()`` and ``.device`` answer like a
    tensor's; ``.to(device)`` is a copy that reads onto that device. Anything else a tensor
    does to all of its values at once (``torch.cat``, ``.reshape``, ``.mean``) is refused: that
    would load the whole set. Index it first (``x[:n]``: :func:`bounded`).

    Example
    -------
    >>> import numpy as np
    >>> class Rows:  # a store: len, shape, read
    ...     shape = (2,)
    ...     def __len__(self): return 10
    ...     def read(self, i): return np.stack([i, -i], 1).astype(np.float32)
    >>> x = LazyInputs(Rows(), np.arange(10)[::-1].copy())
    >>> len(x), x.shape, x[0].tolist(), x[torch.tensor([1, 2])].tolist()
    (10, torch.Size([10, 2]), [9.0, -9.0], [[8.0, -8.0], [7.0, -7.0]])
    """

    streamed = True  # duck-typed by babysit.data.batching, which cannot import this module
    dtype = torch.float32

    def __init__(self, store: ExampleStore, index: np.ndarray, preprocessor: Preprocessor | None = None,
                 device: torch.device | str = "cpu", workers: int = 0,
                 memory_format: torch.memory_format | None = None):
        self.store, self.index = store, np.asarray(index, dtype=np.int64)
        self.device = torch.device(device)
        self.preprocessor = preprocessor.to(self.device) if preprocessor is not None else None
        self.workers, self.memory_format = workers, memory_format
        self._ordered: tuple[DataLoader, _Chunks] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (f"LazyInputs({len(self)} examples of {tuple(self.store.shape)} from {type(self.store).__name__}, "
                f"device={self.device})")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.store.shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.store.shape)

    def dim(self) -> int:
        return self.ndim

    def _copy(self, **changes: Any) -> LazyInputs:
        fields = {"device": self.device, "workers": self.workers, "memory_format": self.memory_format, **changes}
        moved = LazyInputs(self.store, self.index, None, **fields)
        moved.preprocessor = None if self.preprocessor is None else self.preprocessor.to(moved.device)
        return moved

    def to(self, device: torch.device | str) -> LazyInputs:
        """The same examples, read onto ``device``."""
        if isinstance(device, torch.dtype):
            raise TypeError(f"LazyInputs.to: streamed inputs are float32; got dtype {device}")
        return self._copy(device=torch.device(device))

    def cpu(self) -> LazyInputs:
        return self.to("cpu")

    def contiguous(self, memory_format: torch.memory_format = torch.contiguous_format) -> LazyInputs:
        """Batches read in ``memory_format`` (channels_last: the layout tensor cores want)."""
        return self._copy(memory_format=memory_format)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.is_floating_point:
            return True
        raise TypeError(f"{getattr(func, '__name__', func)} on streamed inputs (LazyInputs) would read the "
                        "whole data set; index them first (x[:n], babysit.data.streaming.bounded)")

    def positions(self, key: Any) -> np.ndarray:
        """``key`` (int, slice, int or bool tensor / array / list) as positions 0..len-1."""
        n = len(self.index)
        if isinstance(key, slice):
            return np.arange(*key.indices(n))
        if isinstance(key, Tensor):
            key = key.detach().cpu().numpy()
        chosen = np.asarray(key)
        if chosen.dtype == np.bool_:
            if chosen.shape != (n,):
                raise IndexError(f"LazyInputs: a mask of shape {chosen.shape} for {n} examples")
            return np.flatnonzero(chosen)
        if chosen.dtype.kind not in "iu":
            raise IndexError(f"LazyInputs: index with ints, slices or masks, got {chosen.dtype}")
        chosen = np.where(chosen < 0, chosen + n, chosen).astype(np.int64).reshape(-1)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= n):
            raise IndexError(f"LazyInputs: index out of range for {n} examples")
        return chosen

    def __getitem__(self, key: Any) -> Tensor:
        one = isinstance(key, (int, np.integer)) or (isinstance(key, Tensor) and key.dim() == 0)
        raw = torch.from_numpy(self.store.read(self.index[self.positions(key)]))
        x = self.prepared(raw)
        return x[0] if one else x

    def prepared(self, raw: Tensor) -> Tensor:
        """A batch as read (CPU float32, pinned when the loader pins) on the device, preprocessed."""
        x = raw.to(self.device, non_blocking=True)
        if self.preprocessor is not None and self.preprocessor.fitted:
            x = self.preprocessor.transform(x)
        if self.memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def raw_in_order(self, batch_size: int = READ_CHUNK, persistent: bool = True) -> Iterator[Tensor]:
        """Every example in order, ``batch_size`` at a time, as read (CPU, not preprocessed),
        by ``workers`` DataLoader processes."""
        chunks = list(torch.arange(len(self.index)).split(batch_size))
        if not persistent:
            yield from _loader(self.store, self.index, chunks, self.workers, pin=False, persistent=False)
            return
        if self._ordered is None:
            sampler = _Chunks()
            self._ordered = (_loader(self.store, self.index, sampler, self.workers, pin=self.device.type == "cuda"),
                             sampler)
        loader, sampler = self._ordered
        sampler.chunks = chunks
        yield from loader

    def in_order(self, batch_size: int) -> Iterator[Tensor]:
        """Every example in order, ``batch_size`` at a time, preprocessed on the device."""
        for raw in self.raw_in_order(batch_size):
            yield self.prepared(raw)


def bounded(x: Any, examples: int = SAMPLE_EXAMPLES) -> Any:
    """``x`` itself when it is in memory, else a tensor of its first ``examples`` examples: what
    a whole-set check of streamed data looks at.

    Example
    -------
    >>> bounded(torch.zeros(3, 2)).shape
    torch.Size([3, 2])
    """
    return x[:examples] if getattr(x, "streamed", False) else x


def fit_preprocessor(steps: Sequence[str], x: LazyInputs) -> Preprocessor:
    """``data.preprocess`` fitted in one streaming pass over the training inputs ``x`` (read,
    not yet preprocessed), by its DataLoader workers."""
    chunks = x.raw_in_order(READ_CHUNK * 8, persistent=False) if steps else iter(())
    return Preprocessor(steps).fit_streamed(chunks, tuple(x.store.shape))


class StreamBatches:
    """:class:`~babysit.data.batching.Batches` for a streamed training split: the same
    interface (``len``, iteration, ``batch_indices(i)``, ``.generator``, ``.n``, ``.x``,
    ``.y``) and the same batches, each read from disk by a DataLoader.

    Each epoch draws ``torch.randperm(n, generator=generator)`` exactly as Batches does (the
    same draw, from the same checkpointed generator), cuts it into batches and hands those to a
    DataLoader as its sampler: ``x.workers`` processes (persistent across epochs) read and decode
    them, pinned when the data goes to CUDA; the training process moves each batch to the device
    (non-blocking) and preprocesses it there. The labels are gathered once per epoch in memory.

    Example
    -------
    >>> import numpy as np
    >>> class Rows:
    ...     shape = (1,)
    ...     def __len__(self): return 10
    ...     def read(self, i): return i[:, None].astype(np.float32)
    >>> x, y = LazyInputs(Rows(), np.arange(10)), torch.arange(10)
    >>> batches = StreamBatches(x, y, 4, torch.Generator().manual_seed(0))
    >>> [len(yb) for _, yb in batches], all((xb[:, 0].long() == yb).all() for xb, yb in batches)
    ([4, 4, 2], True)
    """

    def __init__(self, x: LazyInputs, y: Tensor, batch_size: int | str, generator: torch.Generator | None,
                 shuffle: bool = True):
        self.x, self.y = x, y
        self.n = len(x)
        self.batch_size = batch_length(len(x), len(y), batch_size, "StreamBatches")
        self.generator, self.shuffle = generator, shuffle
        self.order: Tensor | None = None  # this epoch's permutation (CPU), None: 0..n-1
        self._sampler = _Chunks()
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) if self.n else 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.order, y = None, self.y
        order = torch.arange(self.n)
        if self.shuffle and len(self) > 1:  # the draw Batches makes, on the generator's device
            device = self.generator.device if self.generator is not None else torch.device("cpu")
            order = torch.randperm(self.n, generator=self.generator, device=device).cpu()
            self.order = order
            y = y[order.to(y.device)]  # one gather of the labels per epoch; batches below are views
        self._sampler.chunks = list(order.split(self.batch_size))
        if self._loader is None:
            self._loader = _loader(self.x.store, self.x.index, self._sampler, self.x.workers,
                                   pin=self.x.device.type == "cuda")
        size = self.batch_size
        for i, raw in enumerate(self._loader):
            yield self.x.prepared(raw), y[i * size:(i + 1) * size]

    def batch_indices(self, i: int) -> Tensor:
        """The indices (into ``x`` / ``y``) of batch ``i`` of the epoch being (or last) iterated."""
        if i < 0:
            raise IndexError(f"StreamBatches.batch_indices: batch {i}")
        start, stop = i * self.batch_size, (i + 1) * self.batch_size
        if self.order is None:
            return torch.arange(start, min(stop, self.n))
        return self.order[start:stop]


__all__ = ["SAMPLE_EXAMPLES", "ExampleStore", "ImageFiles", "LazyInputs", "MappedArray", "StreamBatches",
           "StreamedSource", "bounded", "fit_preprocessor", "float32_bytes", "streamed_source"]
