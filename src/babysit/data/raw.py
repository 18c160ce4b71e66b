"""What a data source gives: arrays as read or generated, before splitting and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawData:
    """Arrays as a source produced them, before splitting and preprocessing.

    ``where`` names the origin in error messages (a file path, or ``data.source=digits``).
    ``num_classes`` is set when the source knows it (10 digits, K spiral arms, the class
    folders); otherwise it is inferred from the training labels as ``max(y) + 1``.
    A source that must split its own validation set (text, where windows cut from one text
    would overlap across a random hold-out) gives ``x_val`` / ``y_val``. ``tokens`` marks
    token-id inputs: ``x`` (N, T) int64 ids and ``y`` (N, T) the next ids, kept as integers.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    task: str = "classification"
    num_classes: int | None = None
    class_names: list[str] | None = None
    where: str = "data"
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    tokens: bool = False


__all__ = ["RawData"]
