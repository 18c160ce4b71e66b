"""Which keys of a resolved spec apply to the run, for the report's "Resolved spec" section.

config.yaml lists every key of every section with its value, defaults included: a CNN's
has ``model.hidden``, a CSV run's ``data.classes`` and ``data.noise``, none of which the run
read. The report shows the keys that shaped the run and folds the rest into a
``<details>`` element. What applies is decided by the small tables below, read off the
builders (``nets/``: which ``spec.*`` each reads) and the sources (``data/sources.py``,
``data/__init__.py``: which ``data.*`` the source and the carving read):

- :data:`MODEL_KEYS`: ``model.kind`` -> the model keys its builder (and ``nets.init``) reads;
- :data:`DATA_KEYS`: ``data.source`` -> the data keys its source and the split carving read;
- :data:`CONDITIONS`: a key that applies only when another key, itself applying, has one of
  some values (``model.groups`` only for ``norm: group``).

Sections other than ``model`` and ``data`` are shown whole, and so is a section whose kind or
source is not in the tables (a spec from another version): nothing is hidden on a guess.
A key no table knows (a newer key) is shown too.

Example
-------
>>> shown, folded = split_spec({"model": {"kind": "cnn", "hidden": [100], "channels": [8]}, "seed": 0})
>>> shown
{'model': {'kind': 'cnn', 'channels': [8]}, 'seed': 0}
>>> folded
{'model': {'hidden': [100]}}
"""

from __future__ import annotations

from typing import Any

_INIT = ("init", "init_std", "bias_init")  # nets.init.initialize, after any builder but gpt's
_UNITS = ("activation", "maxout_pieces", "norm", "groups", "dropout")  # a hidden layer or conv stage
_RECURRENT = ("kind", "hidden", "bidirectional", "embedding", "dropout", *_INIT)  # gru/lstm gates are fixed

MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "mlp": ("kind", "hidden", *_UNITS, "residual", *_INIT),
    "cnn": ("kind", "channels", "kernel_size", *_UNITS, *_INIT),  # residual: use kind resnet
    "resnet": ("kind", "channels", "kernel_size", *_UNITS, *_INIT),
    "perceptron": ("kind", "basis", "basis_degree", "basis_features", *_INIT),  # norm/dropout/residual refused
    "rnn": ("kind", "hidden", "activation", "bidirectional", "embedding", "dropout", *_INIT),
    "gru": _RECURRENT,
    "lstm": _RECURRENT,
    "autoencoder": ("kind", "backbone", "hidden", "channels", "kernel_size", "bottleneck", *_UNITS, "residual",
                    *_INIT),
    "gan": ("kind", "backbone", "hidden", "channels", "kernel_size", "latent", *_UNITS, "residual", *_INIT),
    "gpt": ("kind", "layers", "heads", "embed", "dropout", "qk_norm"),  # GPT-2's own init (nets/gpt.py)
}

_CARVING = ("split_seed", "val_fraction", "test_fraction", "train_size", "preprocess", "batch_size", "augment")

DATA_KEYS: dict[str, tuple[str, ...]] = {
    "mnist1d": ("source", "samples", "split_seed", "val_fraction", "train_size", "preprocess", "batch_size",
                "augment"),  # own test split
    "digits": ("source", *_CARVING),
    "spirals": ("source", "samples", "classes", "noise", *_CARVING),
    "blobs": ("source", "samples", "classes", "noise", *_CARVING),
    # test_fraction: when the file has no x_test; a folder of .npy arrays and image folders may stream
    "npz": ("source", "path", *_CARVING, "in_memory_limit", "workers"),
    "csv": ("source", "path", "target", *_CARVING),
    "folder": ("source", "path", *_CARVING, "in_memory_limit", "workers"),
    # contiguous, unshuffled splits of token ids: no split_seed, no preprocessing (data/text.py)
    "text": ("source", "path", "context", "val_fraction", "test_fraction", "train_size", "batch_size"),
}

# key -> (the key it depends on, the values of that key for which it applies)
CONDITIONS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "maxout_pieces": ("activation", ("maxout",)),
    "groups": ("norm", ("group",)),
    "init_std": ("init", ("normal",)),
    "basis_degree": ("basis", ("polynomial",)),
    "basis_features": ("basis", ("fourier",)),
    # autoencoder / gan: dense layers (hidden) or conv stages (channels), by backbone
    "hidden": ("backbone", ("mlp",)),
    "residual": ("backbone", ("mlp",)),
    "channels": ("backbone", ("cnn",)),
    "kernel_size": ("backbone", ("cnn",)),
}

# section -> (the key that selects the table row, the table)
TABLES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "model": ("kind", MODEL_KEYS),
    "data": ("source", DATA_KEYS),
}


def applying_keys(section: str, values: dict[str, Any]) -> set[str] | None:
    """The keys of ``values`` (one section of a spec) that apply, or None when every key is
    shown (no table for the section, or a kind/source the table does not know).

    Example
    -------
    >>> sorted(applying_keys("model", {"kind": "mlp", "hidden": [8], "norm": "none", "groups": 4, "channels": [3]}))
    ['hidden', 'kind', 'norm']
    >>> applying_keys("optimizer", {"name": "sgd"}) is None
    True
    """
    if section not in TABLES:
        return None
    selector, table = TABLES[section]
    listed = table.get(values.get(selector)) if isinstance(values.get(selector), str) else None
    if listed is None:
        return None
    known = {key for keys in table.values() for key in keys}
    out = set()
    for key in values:
        if key not in known:
            out.add(key)  # a key the tables do not know: shown, never hidden on a guess
            continue
        if key not in listed:
            continue
        if key in CONDITIONS:
            other, allowed = CONDITIONS[key]
            if other in listed and other in values and values[other] not in allowed:
                continue
        out.add(key)
    return out


def split_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``spec`` split into (what applies, what does not), both in config.yaml's key order;
    the second holds only the sections that have keys left out.

    Example
    -------
    >>> shown, folded = split_spec({"data": {"source": "csv", "path": "a.csv", "classes": 3, "noise": 0.2}})
    >>> shown, folded
    ({'data': {'source': 'csv', 'path': 'a.csv'}}, {'data': {'classes': 3, 'noise': 0.2}})
    """
    shown: dict[str, Any] = {}
    folded: dict[str, Any] = {}
    for section, values in spec.items():
        keep = applying_keys(section, values) if isinstance(values, dict) else None
        if keep is None:
            shown[section] = values
            continue
        shown[section] = {k: v for k, v in values.items() if k in keep}
        rest = {k: v for k, v in values.items() if k not in keep}
        if rest:
            folded[section] = rest
    return shown, folded


__all__ = ["CONDITIONS", "DATA_KEYS", "MODEL_KEYS", "TABLES", "applying_keys", "split_spec"]
