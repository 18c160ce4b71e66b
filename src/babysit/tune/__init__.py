"""Finders: the learning rate and the batch size to train with, measured on the network;
and the hyperparameter search.

- :func:`lr_find`: the learning-rate range test (Smith 2015/2017, fastai's ``lr_find``)
  with a lag-free smoothing and a suggestion that is stable from seed to seed.
- :func:`batch_find`: samples per second at each batch size, the largest that fits
  and the fastest.
- :func:`babysit.tune.search.search` (``babysit search``): Optuna over the spec's ``search:``
  section, with the :class:`DivergencePruner` around Optuna's median rule (the names below
  come from :mod:`babysit.tune.search` on first use, so the finders never import Optuna).

Both work on any ``torch.nn.Module`` with tensors; ``lr_find_from_spec`` and
``batch_find_from_spec`` run them for an experiment spec (``babysit lr-find``,
``babysit batch-find``).

Example
-------
>>> import torch
>>> from torch import nn
>>> from babysit.tune import lr_find
>>> x = torch.randn(200, 5)
>>> y = (x[:, 0] > 0).long()
>>> result = lr_find(nn.Linear(5, 2), nn.CrossEntropyLoss(),
...                  lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
...                  x, y, 20, start=1e-4, end=100.0, steps=60, seed=0)
>>> result.suggestion < (result.diverged_at or 100.0)
True
"""

from typing import Any

from babysit.tune.batch_finder import (
    BatchFindResult,
    batch_find,
    batch_find_from_spec,
    batch_find_lines,
    batch_find_table,
    batch_sizes,
    write_batch_find,
)
from babysit.tune.lr_finder import (
    LRFindResult,
    format_lr,
    lr_find,
    lr_find_directory,
    lr_find_from_spec,
    lr_schedule,
    plot_lr_find,
    smooth_in_log_lr,
    write_lr_find,
)

SEARCH_NAMES = ("DivergencePruner", "SearchResult", "TrialReporter", "TrialSeededRandomSampler")

__all__ = [
    "BatchFindResult",
    "DivergencePruner",
    "SearchResult",
    "TrialReporter",
    "TrialSeededRandomSampler",
    "LRFindResult",
    "batch_find",
    "batch_find_from_spec",
    "batch_find_lines",
    "batch_find_table",
    "batch_sizes",
    "format_lr",
    "lr_find",
    "lr_find_directory",
    "lr_find_from_spec",
    "lr_schedule",
    "plot_lr_find",
    "smooth_in_log_lr",
    "write_batch_find",
    "write_lr_find",
]


def __getattr__(name: str) -> Any:
    if name in SEARCH_NAMES:
        import importlib

        return getattr(importlib.import_module("babysit.tune.search"), name)
    raise AttributeError(f"module 'babysit.tune' has no attribute {name!r}")
