"""Character-level text: the ``text`` source, for next-character language modelling.

A text file is read as UTF-8 and turned into token ids over its vocabulary, the sorted set of
characters it contains (Karpathy's char-rnn and nanoGPT's ``shakespeare_char`` do the same).
The text is cut into three contiguous parts, in order: training, validation (the
``val_fraction`` before the test part) and test (the last ``test_fraction``). Each part is then
cut into non-overlapping windows of ``data.context`` characters: ``x`` is a window, ``y`` the
same window shifted by one character, so every position of a window is one next-character
prediction. Cutting the text before windowing means no window of one split overlaps a window
of another: a random hold-out of overlapping windows would put the validation text into the
training set.

Without ``data.path`` the source reads the text shipped with babysit: a selection of
Shakespeare's Sonnets (1609, public domain), about 35 KB, 60-odd distinct characters.

Example
-------
>>> from babysit.config import DataSpec
>>> raw = text_source(DataSpec(source="text", context=32), seed=0)
>>> raw.x.shape[1], raw.x.dtype.name, bool((raw.x[0, 1:] == raw.y[0, :-1]).all())
(32, 'int64', True)
>>> decode(raw.x[0, :14], raw.class_names)
"SHAKESPEARE'S "
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from babysit.config import DataSpec
from babysit.data.raw import RawData
from babysit.errors import BabysitError

DEFAULT_TEXT = Path(__file__).parent / "texts" / "sonnets.txt"
MAX_TEXT_BYTES = 200_000_000


def read_text(path: str | Path | None = None) -> str:
    """The text at ``path`` (the shipped sonnets when None), as one string.

    A missing, unreadable or non-UTF-8 file is a BabysitError naming it.
    """
    file = Path(path) if path else DEFAULT_TEXT
    if not file.exists():
        raise BabysitError(f"{file}: text file not found (data.path for source 'text')")
    if not file.is_file():  # a FIFO blocks forever, /dev/zero fills the memory
        raise BabysitError(f"{file}: not a regular file (data.path for source 'text' names a text file)")
    if file.stat().st_size > MAX_TEXT_BYTES:
        raise BabysitError(f"{file}: larger than {MAX_TEXT_BYTES // 1_000_000} MB; babysit's language models "
                           "train on a small text held in memory")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BabysitError(f"{file}: not a UTF-8 text file") from None
    except OSError as exc:
        raise BabysitError(f"{file}: cannot read the text file ({exc.__class__.__name__})") from None


def vocabulary(text: str) -> list[str]:
    """The sorted distinct characters of ``text``: token id i is ``vocabulary[i]``.

    Example
    -------
    >>> vocabulary("hello")
    ['e', 'h', 'l', 'o']
    """
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> np.ndarray:
    """Token ids (int64) of ``text``; a character outside ``vocab`` is a BabysitError.

    Example
    -------
    >>> encode("hole", ["e", "h", "l", "o"]).tolist()
    [1, 3, 2, 0]
    """
    index = {char: i for i, char in enumerate(vocab)}
    unknown = sorted({c for c in text if c not in index})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5])
        raise BabysitError(f"text: {len(unknown)} character(s) not in the model's vocabulary: {shown}")
    return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))


def decode(ids: np.ndarray | list[int], vocab: list[str]) -> str:
    """The text of token ids ``ids``.

    Example
    -------
    >>> decode([1, 3, 2, 0], ["e", "h", "l", "o"])
    'hole'
    """
    return "".join(vocab[int(i)] for i in ids)


def windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``context`` ids and their next-id targets.

    ``x[i] = ids[i*T : (i+1)*T]`` and ``y[i] = ids[i*T + 1 : (i+1)*T + 1]`` for T = context;
    the last few ids that do not fill a window are left out.

    Example
    -------
    >>> x, y = windows(np.arange(10), 3)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    """
    n = (len(ids) - 1) // context
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x, y


def split_text(text: str, val_fraction: float, test_fraction: float) -> tuple[str, str, str]:
    """The text cut into contiguous (train, val, test) parts: test the last ``test_fraction``,
    val the ``val_fraction`` before it.

    Example
    -------
    >>> split_text("abcdefghij", 0.2, 0.1)
    ('abcdefg', 'hi', 'j')
    """
    n = len(text)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    train_end = n - n_test - n_val
    return text[:train_end], text[train_end:n - n_test], text[n - n_test:]


def text_source(spec: DataSpec, seed: int = 0) -> RawData:
    """The ``text`` source: token windows of ``spec.path`` (default: the shipped sonnets).

    The splits are contiguous (see the module docstring) and fixed: ``seed`` does not move
    them. The vocabulary, the class names, is that of the whole text, so every split
    encodes. ``data.preprocess`` does not apply to token ids and is skipped for this source.
    """
    text = read_text(spec.path)
    where = f"{spec.path or DEFAULT_TEXT}"
    vocab = vocabulary(text)
    if len(vocab) < 2:
        raise BabysitError(f"{where}: a language model needs at least 2 distinct characters, got {len(vocab)}")
    parts = split_text(text, spec.val_fraction, spec.test_fraction)
    arrays = []
    for name, part in zip(("training", "validation", "test"), parts, strict=True):
        if name != "training" and not part:
            arrays.append((None, None))  # val_fraction or test_fraction 0: no such split
            continue
        if len(part) < spec.context + 1:
            raise BabysitError(
                f"{where}: the {name} part has {len(part)} characters, fewer than one window of "
                f"data.context + 1 = {spec.context + 1}; use a longer text or a smaller data.context")
        arrays.append(windows(encode(part, vocab), spec.context))
    (x, y), (x_val, y_val), (x_test, y_test) = arrays
    return RawData(x, y, x_test, y_test, num_classes=len(vocab), class_names=vocab, where=where,
                   x_val=x_val, y_val=y_val, tokens=True)


__all__ = ["DEFAULT_TEXT", "decode", "encode", "read_text", "split_text", "text_source",
           "vocabulary", "windows"]
