"""Where examples come from: one function per ``data.source``, each returning numpy arrays.

Every source returns a :class:`RawData` (x, y and, when the source ships one, a test split)
and knows nothing about validation splits, preprocessing or tensors; :func:`babysit.data.load`
does those. :func:`check` then validates any RawData with one-line errors naming the file
(or the ``data.*`` field) and what is wrong, so a bad ``.npz`` reads the same as a bad ``.csv``.

Sources
-------
- ``mnist1d``: Greydanus (2020), "Scaling down deep learning", generated offline with
  ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads) and cached as ``.npz``.
- ``digits``: scikit-learn's 8x8 handwritten digits (UCI), shipped with scikit-learn.
- ``spirals``: the K-arm spiral of CS231n's "Putting it together: minimal neural network case study".
- ``blobs``: isotropic Gaussian clusters (``sklearn.datasets.make_blobs``) on the unit circle.
- ``npz`` / ``csv`` / ``folder``: the user's own data.

Example
-------
>>> from babysit.config import DataSpec
>>> raw = SOURCES["spirals"](DataSpec(source="spirals", samples=300), seed=0)
>>> raw.x.shape, raw.task, raw.num_classes
((300, 2), 'classification', 3)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from babysit.config import DataSpec
from babysit.data.raw import RawData
from babysit.data.text import text_source
from babysit.errors import BabysitError
from babysit.rundir import save_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096  # per image file (PIL's header gives the size before decoding)
CACHE_FORMAT = 1  # bump when the cached arrays change meaning, so old caches are not reused


# --------------------------------------------------------------------------- generated


def cache_dir() -> Path:
    """``$BABYSIT_CACHE`` when set, else ``~/.cache/babysit``."""
    return Path(os.environ.get("BABYSIT_CACHE") or Path.home() / ".cache" / "babysit")


def _mnist1d_args(samples: int | None) -> dict:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only get_dataset (the download) uses it; it must not change the cache key
    if samples is not None:
        args["num_samples"] = samples
    return args


def mnist1d(spec: DataSpec, seed: int = 0) -> RawData:
    """MNIST-1D with the package's default arguments: 5000 examples, 4000 train / 1000 test.

    The data's own seed is the package default (42), not the experiment seed, so every run
    sees the same MNIST-1D. ``data.samples`` overrides ``num_samples``. The arrays are cached
    as ``.npz`` keyed by the arguments, written atomically so parallel runs never read half a file.

    Example
    -------
    >>> raw = mnist1d(DataSpec(samples=100))
    >>> raw.x.shape, raw.x_test.shape
    ((80, 40), (20, 40))
    """
    args = _mnist1d_args(spec.samples)
    if args["num_samples"] < 10:
        raise BabysitError(f"data.samples: mnist1d needs at least 10 (one per digit), got {args['num_samples']}")
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, args], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _make_mnist1d(args)
        _write_cache(path, arrays)
    return RawData(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"],
                   num_classes=10, where="data.source=mnist1d")


def _make_mnist1d(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global `random` and `np.random`; put the caller's state back.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # a damaged cache is regenerated, never trusted


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        save_npz(path, **arrays)  # atomic: readers see the old file or the whole new one
    except OSError:
        pass  # a read-only cache only costs regenerating next time


def digits(spec: DataSpec, seed: int = 0) -> RawData:
    """scikit-learn's 1797 8x8 digits as (N, 1, 8, 8), pixel counts 0..16 scaled to [0, 1].

    Example
    -------
    >>> digits(DataSpec(source="digits")).x.shape
    (1797, 1, 8, 8)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    return RawData(x, bunch.target.astype(np.int64), num_classes=10, where="data.source=digits")


def spirals(spec: DataSpec, seed: int = 0) -> RawData:
    """CS231n's spiral: ``classes`` arms of ``samples // classes`` points each.

    Arm j has radius linspace(0, 1) and angle linspace(4j, 4j + 4) plus Gaussian noise of
    std ``noise`` (0.2 in CS231n). Not linearly separable for 3 arms, which is the point.

    Example
    -------
    >>> spirals(DataSpec(source="spirals", classes=4, samples=400)).y.tolist().count(3)
    100
    """
    samples = spec.samples or 1500
    per_class = samples // spec.classes
    if per_class < 1:
        raise BabysitError(f"data.samples: spirals needs at least one point per arm ({spec.classes}), got {samples}")
    rng = np.random.default_rng(seed % 2**64)  # SeedSequence wants non-negative entropy
    xs, ys = [], []
    for j in range(spec.classes):
        r = np.linspace(0.0, 1.0, per_class)
        t = np.linspace(j * 4.0, (j + 1) * 4.0, per_class) + rng.standard_normal(per_class) * spec.noise
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(per_class, j, dtype=np.int64))
    return RawData(np.concatenate(xs), np.concatenate(ys), num_classes=spec.classes,
                   where="data.source=spirals")


def blobs(spec: DataSpec, seed: int = 0) -> RawData:
    """``classes`` Gaussian blobs of std ``noise`` centred evenly on the unit circle.

    Fixed centres (rather than make_blobs' random ones) keep the difficulty a function of
    ``noise`` alone: neighbouring centres are 2 sin(pi / classes) apart.

    Example
    -------
    >>> blobs(DataSpec(source="blobs", samples=90)).x.shape
    (90, 2)
    """
    from sklearn.datasets import make_blobs

    samples = spec.samples or 1500
    if samples < spec.classes:
        raise BabysitError(f"data.samples: blobs needs at least one point per class ({spec.classes}), got {samples}")
    angles = 2 * np.pi * np.arange(spec.classes) / spec.classes
    centers = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x, y = make_blobs(n_samples=samples, centers=centers, cluster_std=spec.noise,
                      random_state=seed % 2**32)
    return RawData(x, y.astype(np.int64), num_classes=spec.classes, where="data.source=blobs")


# --------------------------------------------------------------------------- files


def _memory_bytes() -> int:
    """The machine's physical memory (a large number where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2**62


def _claimed_bytes(archive: Any, name: str) -> int | None:
    """The bytes an array of an .npz archive says it holds (from its .npy header, before
    anything is read); None when the header cannot be read (reading it then fails in one line)."""
    try:
        with archive.zip.open(name + ".npy") as member:
            version = np.lib.format.read_magic(member)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(member))
        return int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
    except Exception:  # noqa: BLE001 (any damage is reported when the array itself is read)
        return None


def _existing(path: str | None, kind: str) -> Path:
    """``data.path`` as a regular file: a FIFO would block forever and a device such as
    /dev/zero would fill the memory, so anything else is refused in one line."""
    p = Path(path or "")
    if not p.exists():
        raise BabysitError(f"{p}: data file not found (data.path for source '{kind}')")
    if not p.is_file():
        raise BabysitError(f"{p}: not a regular file (data.path for source '{kind}' names a .{kind} file)")
    return p


def npz(spec: DataSpec, seed: int = 0) -> RawData:
    """Arrays ``x``, ``y`` and optional ``x_test``, ``y_test`` from a ``.npz`` file, or from a
    folder of the same arrays as ``.npy`` files (x.npy, y.npy [, x_test.npy, y_test.npy]), which
    are memory-mapped: a folder larger than ``data.in_memory_limit`` streams from disk
    (:mod:`babysit.data.streaming`), as an .npz (a zip archive) cannot.

    Integer or bool ``y`` is classification (labels 0..C-1), string ``y`` names classes,
    float ``y`` is regression with targets (N,) or (N, k). Pickled arrays are refused.

    Example
    -------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
    >>> np.savez(path, x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
    >>> npz(DataSpec(source="npz", path=path)).task
    'classification'
    """
    if spec.path and Path(spec.path).is_dir():
        return _npz_arrays(npy_arrays(Path(spec.path)), Path(spec.path))
    path = _existing(spec.path, "npz")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        f = None
    if not isinstance(f, np.lib.npyio.NpzFile):  # garbage, or a single-array .npy
        raise BabysitError(f"{path}: not a valid .npz archive (write one with numpy.savez(path, x=..., y=...))")
    with f:
        arrays = {}
        for name in f.files:
            claimed = _claimed_bytes(f, name)
            if claimed is not None and claimed > _memory_bytes():
                raise BabysitError(f"{path}: array '{name}' claims {claimed / 1e9:.1f} GB, more than this machine's "
                                   f"{_memory_bytes() / 1e9:.1f} GB of memory")
            try:
                arrays[name] = f[name]
            except ValueError:  # object arrays need pickle, which is never allowed for data files
                raise BabysitError(f"{path}: array '{name}' is an object (pickled) array; "
                                   f"save plain numeric or string arrays") from None
            except (OSError, EOFError, zipfile.BadZipFile):
                raise BabysitError(f"{path}: array '{name}' is damaged; not a valid .npz archive") from None
    return _npz_arrays(arrays, path)


NPY_NAMES = ("x", "y", "x_test", "y_test")  # the arrays of an .npz, or the .npy files of a folder


def npy_arrays(root: Path) -> dict[str, np.ndarray]:
    """The ``.npy`` files of ``data.path`` (a folder): x.npy, y.npy and optional x_test.npy,
    y_test.npy, memory-mapped (read from disk as they are used, not loaded); pickled arrays are refused.

    Example
    -------
    >>> import numpy as np, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(root / "x.npy", np.zeros((4, 3))); np.save(root / "y.npy", np.array([0, 1, 0, 1]))
    >>> sorted(npy_arrays(root)), type(npy_arrays(root)["x"]).__name__
    (['x', 'y'], 'memmap')
    """
    arrays = {}
    for name in NPY_NAMES:
        path = root / f"{name}.npy"
        if not path.exists():
            continue
        if not path.is_file():
            raise BabysitError(f"{path}: not a regular file")
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            why = ("an object (pickled) array; save plain numeric or string arrays" if "pickle" in str(exc)
                   else "not a valid .npy file (write one with numpy.save)")
            raise BabysitError(f"{path}: {why}") from None
        except (OSError, EOFError):
            raise BabysitError(f"{path}: not a valid .npy file (write one with numpy.save)") from None
    if not arrays:
        raise BabysitError(f"{root}: no x.npy / y.npy in the folder (data.path for source 'npz' names an .npz "
                           "file or a folder of x.npy, y.npy [, x_test.npy, y_test.npy])")
    return arrays


def _npz_arrays(arrays: dict[str, np.ndarray], path: Path) -> RawData:
    """The RawData of an .npz archive's arrays, or of a folder's .npy files."""
    if "x" not in arrays or "y" not in arrays:
        missing = " and ".join(repr(k) for k in ("x", "y") if k not in arrays)
        have = ", ".join(repr(k) for k in arrays) or "none"
        raise BabysitError(f"{path}: no array {missing}; the file has arrays: {have}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise BabysitError(f"{path}: has {'x_test' if 'x_test' in arrays else 'y_test'} without "
                           f"{'y_test' if 'x_test' in arrays else 'x_test'}; give both or neither")
    for name, arr in arrays.items():
        if name in ("x", "x_test") and arr.dtype.kind not in "biuf":
            raise BabysitError(f"{path}: array '{name}' must be numeric, got dtype {arr.dtype}")
    y, y_test = arrays["y"], arrays.get("y_test")
    task, names, num_classes = "classification", None, None
    if y.dtype.kind in "US":
        y, y_test, names = _encode_names(y, y_test, path)
        num_classes = len(names)
    elif np.issubdtype(y.dtype, np.floating):
        task = "regression"
    elif y.dtype.kind not in "biu":
        raise BabysitError(f"{path}: array 'y' must hold numbers or strings, got dtype {y.dtype}")
    return RawData(arrays["x"], y, arrays.get("x_test"), y_test, task=task,
                   num_classes=num_classes, class_names=names, where=str(path))


def _encode_names(y: np.ndarray, y_test: np.ndarray | None, where: Path | str):
    """String labels -> indices into the sorted unique training names."""
    names = sorted({str(v) for v in y.reshape(-1)})
    index = {n: i for i, n in enumerate(names)}
    codes = np.array([index[str(v)] for v in y.reshape(-1)], dtype=np.int64)
    codes_test = None
    if y_test is not None:
        unknown = sorted({str(v) for v in y_test.reshape(-1)} - set(names))
        if unknown:
            raise BabysitError(f"{where}: labels out of range: y_test has {unknown[0]!r}, "
                               f"classes seen in training are {', '.join(names[:10])}{'...' if len(names) > 10 else ''}")
        codes_test = np.array([index[str(v)] for v in y_test.reshape(-1)], dtype=np.int64)
    return codes, codes_test, names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_file(spec: DataSpec, seed: int = 0) -> RawData:
    """A table of numeric features and one label column (the last, or ``data.target``).

    A first row that is not all numbers is a header. String labels become classes in
    sorted order, integral numbers are class indices, other numbers are regression targets.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
    >>> _ = open(path, "w").write("a,b,label\\n0.1,2,cat\\n0.3,1,dog\\n")
    >>> raw = csv_file(DataSpec(source="csv", path=path))
    >>> raw.x.shape, raw.y.tolist(), raw.class_names
    ((2, 2), [0, 1], ['cat', 'dog'])
    """
    path = _existing(spec.path, "csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f))
                    if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BabysitError(f"{path}: not a readable CSV text file ({exc.__class__.__name__})") from None
    if not rows:
        raise BabysitError(f"{path}: empty CSV, no rows")
    header = None
    if not all(_is_number(c) for c in rows[0][1]):
        header = rows[0][1]
        rows = rows[1:]
    if not rows:
        raise BabysitError(f"{path}: CSV has a header but no data rows (empty data)")
    width = len(header) if header is not None else len(rows[0][1])
    for line, row in rows:
        if len(row) != width:
            raise BabysitError(f"{path}: line {line} has {len(row)} columns, expected {width}")
    if width < 2:
        raise BabysitError(f"{path}: needs at least one feature column and a label column, got {width} column")
    names = header or [str(i) for i in range(width)]
    target = _target_column(spec.target, header, width, path)

    features = np.empty((len(rows), width - 1))
    for j, col in enumerate(c for c in range(width) if c != target):
        for i, (line, row) in enumerate(rows):
            try:
                features[i, j] = float(row[col])
            except ValueError:
                raise BabysitError(f"{path}: feature column '{names[col]}' is not numeric "
                                   f"(line {line}: {row[col]!r}); only numeric features are supported") from None
    labels = [row[target] for _, row in rows]
    if all(_is_number(v) for v in labels):
        y = np.array([float(v) for v in labels])
        if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            return RawData(features, y.astype(np.int64), where=str(path))
        return RawData(features, y, task="regression", where=str(path))
    codes, _, classes = _encode_names(np.array(labels), None, path)
    return RawData(features, codes, num_classes=len(classes), class_names=classes, where=str(path))


def _target_column(target: str | int | None, header: list[str] | None, width: int, path: Path) -> int:
    if target is None:
        return width - 1
    if isinstance(target, int):
        if not -width <= target < width:
            raise BabysitError(f"data.target: column index {target} is out of range for {path} with {width} columns")
        return target % width
    if header is None or target not in header:
        have = ", ".join(header) if header else "no header row"
        raise BabysitError(f"data.target: no column named '{target}' in {path} (columns: {have})")
    return header.index(target)


def folder(spec: DataSpec, seed: int = 0) -> RawData:
    """Images in ``path/<class_name>/*.png|jpg``; classes are the sorted subfolder names.

    All images must share one size (no silent resizing). Grayscale images give C=1, anything
    else is converted to RGB (C=3); x is (N, C, H, W) scaled to [0, 1].

    Example
    -------
    >>> raw = folder(DataSpec(source="folder", path="my_images"))  # doctest: +SKIP
    >>> raw.x.shape  # doctest: +SKIP
    (120, 3, 32, 32)
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(spec.path or "")
    files, class_dirs = image_files(root)
    pictures = []
    for p, _ in files:
        if not p.is_file():
            raise BabysitError(f"{p}: not a regular file")
        try:
            with Image.open(p) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise BabysitError(f"{p}: image is {im.width}x{im.height}, larger than "
                                       f"{MAX_IMAGE_PIXELS:,} pixels; babysit trains on small images")
                im.load()
                pictures.append(im.copy())
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            raise BabysitError(f"{p}: not a readable image") from None
    size = pictures[0].size
    for (p, _), im in zip(files, pictures, strict=True):
        if im.size != size:
            raise BabysitError(f"{p}: image is {im.size[0]}x{im.size[1]}, but {files[0][0]} is "
                               f"{size[0]}x{size[1]}; all images must share one size")
    gray = all(im.mode in GRAY_MODES for im in pictures)
    mode = "L" if gray else "RGB"
    x = np.stack([image_pixels(im, mode) for im in pictures])
    x = x[:, None] if gray else x.transpose(0, 3, 1, 2)  # (N, H, W[, C]) -> (N, C, H, W)
    y = np.array([label for _, label in files], dtype=np.int64)
    return RawData(x, y, num_classes=len(class_dirs), class_names=[d.name for d in class_dirs],
                   where=str(root))


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes read as one channel


def image_files(root: Path) -> tuple[list[tuple[Path, int]], list[Path]]:
    """The (image file, class index) pairs of an image folder, class by class in sorted order,
    and the class folders; a missing folder, no class folders or an empty class is one line."""
    if not root.is_dir():
        raise BabysitError(f"{root}: image folder not found (data.path for source 'folder')")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise BabysitError(f"{root}: no class subfolders; expected {root}/<class_name>/*.png|jpg")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        images = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise BabysitError(f"{d}: class folder has no .png/.jpg images")
        files += [(p, label) for p in images]
    return files, class_dirs


def image_pixels(image: Any, mode: str) -> np.ndarray:
    """A PIL image's pixels in ``mode`` ('L' or 'RGB') as float32 in [0, 1]: (H, W) or (H, W, 3)."""
    return np.asarray(image.convert(mode), dtype=np.float32) / 255.0


def text(spec: DataSpec, seed: int = 0) -> RawData:
    """Character windows of a text file for language modelling (see :mod:`babysit.data.text`)."""
    return text_source(spec, seed)


SOURCES: dict[str, Callable[[DataSpec, int], RawData]] = {
    "mnist1d": mnist1d,
    "digits": digits,
    "spirals": spirals,
    "blobs": blobs,
    "npz": npz,
    "csv": csv_file,
    "folder": folder,
    "text": text,
}


# --------------------------------------------------------------------------- validation


def check(raw: RawData) -> RawData:
    """Validate a source's arrays; return them with x as float32 and y typed for the task.

    Raises a one-line :class:`BabysitError` naming ``raw.where`` and the array for: empty
    data, length mismatches, NaN/inf, negative or non-integral class labels, test labels
    beyond the training classes, and fewer than 2 classes.

    Example
    -------
    >>> check(RawData(np.zeros((2, 1)), np.array([0, 1]))).num_classes
    2
    """
    where = raw.where
    if raw.tokens:
        return _check_tokens(raw)
    pairs = [("x", "y", raw.x, raw.y)]
    if raw.x_test is not None:
        pairs.append(("x_test", "y_test", raw.x_test, raw.y_test))
    for xn, yn, x, y in pairs:
        if x.ndim == 0 or len(x) == 0:
            raise BabysitError(f"{where}: empty data, '{xn}' has no examples")
        if y.ndim == 0 or len(x) != len(y):
            ny = len(y) if y.ndim else 0
            raise BabysitError(f"{where}: '{xn}' has {len(x)} examples but '{yn}' has {ny}; they must match")
        for name, arr in ((xn, x), (yn, y)):
            if np.issubdtype(arr.dtype, np.floating):
                nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
                if nan or inf:
                    raise BabysitError(f"{where}: array '{name}' has {nan} NaN and {inf} inf values; "
                                       f"remove or impute them")

    x = raw.x.astype(np.float32)
    if x.ndim == 1:
        x = x[:, None]  # a single feature per example: (N,) -> (N, 1)
    x_test = None
    if raw.x_test is not None:
        x_test = raw.x_test.astype(np.float32)
        if x_test.ndim == 1:
            x_test = x_test[:, None]
        if x_test.shape[1:] != x.shape[1:]:
            raise BabysitError(f"{where}: 'x_test' examples have shape {x_test.shape[1:]}, "
                               f"but 'x' examples have {x.shape[1:]}")

    if raw.task == "regression":
        y = raw.y.astype(np.float32)
        y_test = None if raw.y_test is None else raw.y_test.astype(np.float32)
        if y.ndim > 2:
            raise BabysitError(f"{where}: regression targets 'y' must be (N,) or (N, k), got shape {tuple(y.shape)}")
        if y_test is not None and y_test.shape[1:] != y.shape[1:]:
            raise BabysitError(f"{where}: 'y_test' targets have shape {y_test.shape[1:]}, but 'y' has {y.shape[1:]}")
        return RawData(x, y, x_test, y_test, task="regression", where=where)

    y = _class_labels(raw.y, "y", where)
    num_classes = raw.num_classes or int(y.max()) + 1
    if len(np.unique(y)) < 2:
        raise BabysitError(f"{where}: 'y' has only 1 class ({int(y[0])}); classification needs at least 2")
    y_test = None
    if raw.y_test is not None:
        y_test = _class_labels(raw.y_test, "y_test", where)
    for name, labels in (("y", y), ("y_test", y_test)):
        if labels is not None and int(labels.max()) >= num_classes:
            raise BabysitError(f"{where}: labels out of range: {name} has {int(labels.max())}, "
                               f"classes are 0..{num_classes - 1}")
    return RawData(x, y, x_test, y_test, num_classes=num_classes, class_names=raw.class_names, where=where)


def _class_labels(y: np.ndarray, name: str, where: str) -> np.ndarray:
    """Class labels as int64 (N,); (N, 1) columns are squeezed."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise BabysitError(f"{where}: classification labels '{name}' must be one integer per example, "
                           f"got shape {tuple(y.shape)}")
    if np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
        bad = y[y != np.round(y)][0]
        raise BabysitError(f"{where}: labels in '{name}' must be integers 0..C-1, got {bad:g}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise BabysitError(f"{where}: labels in '{name}' must be integers 0..C-1, got negative label {int(y.min())}")
    return y


def _check_tokens(raw: RawData) -> RawData:
    """Token windows: x and y (N, T) integer ids in 0..num_classes-1 of the same shape, per split."""
    vocab = raw.num_classes or 0
    for suffix in ("", "_val", "_test"):
        x, y = getattr(raw, "x" + suffix), getattr(raw, "y" + suffix)
        if x is None:
            continue
        if x.ndim != 2 or y is None or y.shape != x.shape or len(x) == 0:
            raise BabysitError(f"{raw.where}: token windows 'x{suffix}' and 'y{suffix}' must share a shape (N, T) "
                               f"with N >= 1, got {x.shape} and {None if y is None else y.shape}")
        for name, arr in (("x" + suffix, x), ("y" + suffix, y)):
            if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= vocab:
                raise BabysitError(f"{raw.where}: '{name}' must hold token ids 0..{vocab - 1}")

    def ids(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.astype(np.int64)

    return RawData(ids(raw.x), ids(raw.y), ids(raw.x_test), ids(raw.y_test), num_classes=vocab,
                   class_names=raw.class_names, where=raw.where, x_val=ids(raw.x_val), y_val=ids(raw.y_val),
                   tokens=True)
