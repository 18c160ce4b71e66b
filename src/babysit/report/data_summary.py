"""What the run was trained on, for the report's "Data" section: the train/val/test split
sizes, the shape of one example, the number of classes.

The run directory records these only where the run path writes them into summary.json
(``summary["data"] = {"train", "val", "test", "input_shape", "classes"}``), which is read
first. Otherwise they are computed from config.yaml where the data is a function of the spec
alone: the generated sources, whose sizes are fixed (:data:`GENERATED`), carved as
``babysit.data.load`` carves them (:func:`carve`). A file source (npz, csv, folder, text) is
not re-read: the file may have changed since the run, and reading it costs what loading
it cost; its sizes are shown as not recorded.

:data:`TINY_VAL_SPLIT` is where the page warns that the validation split is too small to trust.

Example
-------
>>> facts = data_facts({"data": {"source": "spirals", "samples": 300}}, {})
>>> facts.train, facts.val, facts.test, facts.input_shape, facts.classes, facts.where
(216, 24, 60, (2,), 3, 'computed from config.yaml')
>>> facts.tiny_val
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Below about 100 examples the validation numbers are mostly noise: one example moves the
# accuracy by more than a percentage point, and the standard error of an accuracy near 50% is
# sqrt(0.5 * 0.5 / n), 5 points or more. Early stopping, the kept epoch and comparisons of runs
# then follow the noise of the split rather than the model.
TINY_VAL_SPLIT = 100

Facts = tuple[int, int | None, tuple[int, ...], int]


# The sizes of the generated sources, from a data section: (examples before carving, the
# source's own test examples or None, the shape of one example, the number of classes), or
# None where the spec alone does not say. The facts of babysit.data.sources (its docstrings
# give them); the tests check them against babysit.data.load.


def _spirals(data: dict[str, Any]) -> Facts:
    classes = data.get("classes", 3)
    return (data.get("samples") or 1500) // classes * classes, None, (2,), classes  # samples // classes per arm


def _blobs(data: dict[str, Any]) -> Facts:
    return data.get("samples") or 1500, None, (2,), data.get("classes", 3)


def _digits(data: dict[str, Any]) -> Facts:
    return 1797, None, (1, 8, 8), 10  # scikit-learn's 8x8 digits


def _mnist1d(data: dict[str, Any]) -> Facts | None:
    # the package's own 4000 / 1000 split; with data.samples its split follows its own rule
    return (4000, 1000, (40,), 10) if data.get("samples") is None else None


GENERATED: dict[str, Callable[[dict[str, Any]], Facts | None]] = {
    "spirals": _spirals, "blobs": _blobs, "digits": _digits, "mnist1d": _mnist1d,
}
_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {"mnist1d": ((40,), 10)}  # known even when the sizes are not


@dataclass(frozen=True)
class DataFacts:
    """The split sizes (None: not known), one example's shape, the classes, and where they came from."""

    train: int | None = None
    val: int | None = None
    test: int | None = None
    input_shape: tuple[int, ...] | None = None
    classes: int | None = None
    where: str = "not recorded"

    @property
    def tiny_val(self) -> bool:
        """A validation split that exists and holds fewer than :data:`TINY_VAL_SPLIT` examples."""
        return self.val is not None and 0 < self.val < TINY_VAL_SPLIT


def held_out(n: int, fraction: float) -> int:
    """How many of ``n`` examples a hold-out of ``fraction`` takes: ``babysit.data.holdout``'s
    rule, ``round(n * fraction)`` with at least one on each side (0 for a fraction of 0).

    Example
    -------
    >>> held_out(300, 0.2), held_out(5, 0.01), held_out(10, 0.0)
    (60, 1, 0)
    """
    if fraction <= 0 or n < 2:
        return 0
    return min(max(round(n * fraction), 1), n - 1)


def carve(pool: int, own_test: int | None, data: dict[str, Any]) -> tuple[int, int, int]:
    """(train, val, test) sizes as ``babysit.data.load`` carves ``pool`` examples: test by
    ``test_fraction`` (unless the source has its own), val by ``val_fraction`` from the rest,
    then ``train_size`` keeps the first N.

    Example
    -------
    >>> carve(1500, None, {"val_fraction": 0.1, "test_fraction": 0.2})
    (1080, 120, 300)
    >>> carve(4000, 1000, {"val_fraction": 0.1, "train_size": 500})
    (500, 400, 1000)
    """
    test = own_test if own_test is not None else held_out(pool, _fraction(data, "test_fraction", 0.2))
    pool -= 0 if own_test is not None else test
    val = held_out(pool, _fraction(data, "val_fraction", 0.1))
    train = pool - val
    size = data.get("train_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        train = min(train, size)
    return train, val, test


def _fraction(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _recorded(summary: dict[str, Any]) -> DataFacts | None:
    """The facts summary.json records (``summary["data"]``), when it does."""
    data = summary.get("data")
    if not isinstance(data, dict):
        return None

    def count(key: str) -> int | None:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    shape = data.get("input_shape")
    shape = tuple(shape) if isinstance(shape, list) and all(isinstance(n, int) for n in shape) else None
    if all(v is None for v in (count("train"), count("val"), count("test"), shape)):
        return None
    return DataFacts(count("train"), count("val"), count("test"), shape, count("classes"), "summary.json")


def data_facts(spec: dict[str, Any], summary: dict[str, Any]) -> DataFacts:
    """What the run trained on: from summary.json when it records it, else computed from the
    spec for a generated source, else only what the spec says (see the module docstring).

    Example
    -------
    >>> data_facts({"data": {"source": "csv", "path": "a.csv"}}, {}).where
    'not recorded'
    >>> data_facts({}, {"data": {"train": 90, "val": 10, "test": 0, "input_shape": [4], "classes": 2}}).val
    10
    """
    recorded = _recorded(summary)
    if recorded is not None:
        return recorded
    data = spec.get("data", {})
    source = data.get("source", "mnist1d") if isinstance(data, dict) else None  # config.DataSpec's default
    try:
        facts = GENERATED[source](data) if isinstance(source, str) and source in GENERATED else None
    except (TypeError, ZeroDivisionError):  # a damaged config.yaml: nothing computed
        facts = None
    if facts is None:
        shape, classes = _SHAPES.get(source, (None, None)) if isinstance(source, str) else (None, None)
        return DataFacts(input_shape=shape, classes=classes)
    pool, own_test, shape, classes = facts
    train, val, test = carve(pool, own_test, data)
    return DataFacts(train, val, test, shape, classes, "computed from config.yaml")


__all__ = ["GENERATED", "TINY_VAL_SPLIT", "DataFacts", "carve", "data_facts", "held_out"]
