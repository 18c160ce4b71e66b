"""The data ``babysit search`` scores trials on: the spec's validation split, or K-fold
cross-validation of its training pool with ``--folds K``.

With K folds, fold k validates on the k-th part of the pool (the train and val splits
together; the test split stays out of the search) and trains on the rest. The parts are
seeded, and stratified by class for classification; ``data.preprocess`` is fitted on each
fold's training part only, so no fold's validation data leaks into its preprocessing.
:class:`DataCache` loads each distinct ``data`` section once for all the trials that share it.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from babysit import data as data_module
from babysit.config import Experiment
from babysit.data import Split, Splits
from babysit.data.preprocess import Preprocessor
from babysit.errors import BabysitError


def cross_validation_folds(spec: Experiment, folds: int) -> list[Splits]:
    """K-fold cross-validation splits of the spec's training pool (its train and val splits
    together; the test split stays out of the search): fold k validates on the k-th part
    and trains on the rest, with ``data.preprocess`` fitted on that fold's training part
    only. The parts are seeded and stratified by class for classification.

    Example
    -------
    >>> from babysit.config import Experiment
    >>> spec = Experiment(data={"source": "spirals", "samples": 300})
    >>> parts = cross_validation_folds(spec, 3)
    >>> [len(p.val) for p in parts], len(parts[0].train) + len(parts[0].val)
    ([80, 80, 80], 240)
    """
    pooled = data_module.load(spec.data.model_copy(update={"val_fraction": 0.0, "preprocess": []}))
    if pooled.streaming:  # each fold would gather its examples into memory
        raise BabysitError("--folds: the data streams from disk (larger than data.in_memory_limit), and the folds "
                           "would hold it all in memory; search on the validation split (no --folds) or raise "
                           "data.in_memory_limit")
    x, y = pooled.train.x, pooled.train.y
    n = len(x)
    if folds < 2 or n < folds:
        raise BabysitError(f"--folds: needs 2 <= K <= the {n} training examples; got {folds}")
    order = np.random.default_rng((spec.seed % 2**64, 3)).permutation(n)  # stream 3: neither test (1) nor val (2)
    fold_of = np.empty(n, dtype=np.int64)
    if pooled.task == "classification":
        labels = y.numpy()[order]
        dealt = 0
        for c in np.unique(labels):  # each class dealt round the folds in turn, the next class going on from there
            members = order[labels == c]
            fold_of[members] = (dealt + np.arange(len(members))) % folds
            dealt += len(members)
    else:
        fold_of[order] = np.arange(n) % folds
    parts = []
    for k in range(folds):
        held = torch.from_numpy(fold_of == k)
        train = Split(x[~held], y[~held])
        preprocessor = Preprocessor(spec.data.preprocess).fit(train.x)

        def prepared(split: Split | None, pre: Preprocessor = preprocessor) -> Split | None:
            return None if split is None else Split(pre.transform(split.x), split.y)

        parts.append(Splits(train=prepared(train), val=prepared(Split(x[held], y[held])), test=prepared(pooled.test),
                            task=pooled.task, num_classes=pooled.num_classes, input_shape=pooled.input_shape,
                            target_dim=pooled.target_dim, class_names=pooled.class_names, preprocessor=preprocessor))
    return parts


class DataCache:
    """The splits of each distinct ``data`` section (trials searching only the optimizer share
    one): the K folds with ``folds``, else the spec's own splits (which need a validation split)."""

    def __init__(self, folds: int | None):
        self.folds = folds
        self._cache: dict[str, list[Splits]] = {}

    def splits(self, spec: Experiment) -> list[Splits]:
        key = json.dumps([spec.seed, spec.data.model_dump(mode="json")], sort_keys=True)  # a cache key, not a file
        if key not in self._cache:
            if self.folds:
                self._cache[key] = cross_validation_folds(spec, self.folds)
            else:
                splits = data_module.load(spec.data)
                if splits.val is None or not len(splits.val):
                    raise BabysitError("search: trials are scored on the validation split; set data.val_fraction > 0 "
                                       "or pass --folds K")
                self._cache[key] = [splits]
        return self._cache[key]


__all__ = ["DataCache", "cross_validation_folds"]
