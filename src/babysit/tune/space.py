"""The search space of ``babysit search``: the spec's ``search:`` section as Optuna
distributions, how trials draw from it, and the finer space ``--refine`` searches next.

- :func:`parse_space` reads the section (each entry with
  :func:`babysit.config.parse_distribution`; the spec's validation has already checked
  every key and bound against the spec, :func:`babysit.config.search_distribution`);
- :func:`optuna_distribution` and :func:`suggest` map an entry to Optuna's distributions
  and draw a value the spec takes (a list choice goes to Optuna as its JSON text,
  :func:`encode_choice`, and comes back as the list, :func:`decode_params`);
- the samplers: :class:`TrialSeededRandomSampler` (random, reseeded from the trial's number),
  a grid (:func:`grid_space`) or TPE, chosen by :func:`make_sampler`;
- :func:`refine_space` (coarse to fine, CS231n) narrows the space around the best trials;
  :func:`space_to_json` / :func:`space_from_json` keep it in a study for every process,
  :func:`describe` writes an entry back as spec text.

JSON here follows :mod:`babysit.rundir`'s policy (NaN and infinity as null).

Example
-------
>>> space = parse_space({"optimizer.lr": "loguniform(1e-4, 1e-2)", "model.hidden": "choice([16], [32, 32])"})
>>> grid_space(space, 6)
{'optimizer.lr': [0.0001, 0.001, 0.01], 'model.hidden': ['[16]', '[32, 32]']}
>>> describe(space["model.hidden"])
'choice([16], [32, 32])'
"""

from __future__ import annotations

import math
import os
import zlib
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial

from babysit.config import SearchDistribution, parse_distribution
from babysit.errors import BabysitError
from babysit.rundir import dumps, jsonable

SAMPLERS = ("random", "grid", "tpe")
REFINE_TOP_FRACTION = 0.2  # --refine narrows the space to the best 20% of the finished trials (at least 3)
REFINE_LOG_MARGIN = 2.0  # ... widened by this factor either side for log ranges
REFINE_LINEAR_MARGIN = 0.1  # ... and by this share of the original width for linear ones


def parse_space(search_section: dict[str, Any]) -> dict[str, SearchDistribution]:
    """The spec's ``search:`` section as distributions, key by key.

    Example
    -------
    >>> parse_space({"optimizer.lr": "loguniform(1e-4, 1)"})
    {'optimizer.lr': SearchDistribution(kind='loguniform', low=0.0001, high=1.0, choices=())}
    """
    return {key: parse_distribution(text) for key, text in search_section.items()}


# --------------------------------------------------------------------------- Optuna's distributions


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values are None, bool, int, float or str; lists go in as JSON.

    Example
    -------
    >>> encode_choice([64, 64]), encode_choice("relu")
    ('[64, 64]', 'relu')
    """
    return value if value is None or isinstance(value, bool | int | float | str) else dumps(value)


def decode_params(params: dict[str, Any], space: dict[str, SearchDistribution]) -> dict[str, Any]:
    """A trial's parameters as the spec takes them (list choices back from their JSON text).

    Example
    -------
    >>> decode_params({"model.hidden": "[32, 32]"}, parse_space({"model.hidden": "choice([16], [32, 32])"}))
    {'model.hidden': [32, 32]}
    """
    values = {}
    for key, value in params.items():
        d = space.get(key)
        if d is not None and d.is_choice:
            encoded = [encode_choice(c) for c in d.choices]
            value = d.choices[encoded.index(value)] if value in encoded else value
        values[key] = value
    return values


def optuna_distribution(distribution: SearchDistribution) -> BaseDistribution:
    """The Optuna distribution of one ``search:`` entry.

    Example
    -------
    >>> from babysit.config import parse_distribution
    >>> optuna_distribution(parse_distribution("loguniform(1e-4, 1)"))
    FloatDistribution(high=1.0, log=True, low=0.0001, step=None)
    """
    if distribution.is_choice:
        return CategoricalDistribution([encode_choice(c) for c in distribution.choices])
    if distribution.is_integer:
        return IntDistribution(int(distribution.low), int(distribution.high))
    return FloatDistribution(float(distribution.low), float(distribution.high), log=distribution.log)


def suggest(trial: optuna.Trial, key: str, distribution: SearchDistribution) -> Any:
    """Draw ``key`` for ``trial``; returns the value the spec takes (a list for a list choice)."""
    if distribution.is_choice:
        encoded = [encode_choice(c) for c in distribution.choices]
        drawn = trial.suggest_categorical(key, encoded)
        return distribution.choices[encoded.index(drawn)]
    if distribution.is_integer:
        return trial.suggest_int(key, int(distribution.low), int(distribution.high))
    return trial.suggest_float(key, float(distribution.low), float(distribution.high), log=distribution.log)


# --------------------------------------------------------------------------- samplers


class TrialSeededRandomSampler(BaseSampler):
    """Optuna's random sampling, with the generator seeded from (seed, trial number, key).

    Trial *n* gets the same values whichever process runs it, so a search is reproducible
    from its seed however many processes share the study, and two processes never draw the
    same sequence. Log-uniform for ``loguniform`` keys, uniform otherwise.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        entropy = [self.seed % 2**32, trial.number, zlib.crc32(param_name.encode())]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)


def grid_values(distribution: SearchDistribution, points: int) -> list[Any]:
    """Values of one key on a grid: every choice, or ``points`` values spread over the range
    (geometrically for loguniform).

    Example
    -------
    >>> from babysit.config import parse_distribution
    >>> grid_values(parse_distribution("loguniform(1e-4, 1e-2)"), 3)
    [0.0001, 0.001, 0.01]
    """
    if distribution.is_choice:
        return [encode_choice(c) for c in distribution.choices]
    low, high = distribution.low, distribution.high
    if distribution.is_integer:
        return sorted({int(round(v)) for v in np.linspace(low, high, min(points, int(high - low) + 1))})
    if distribution.log:
        return [float(f"{v:.6g}") for v in np.geomspace(low, high, points)]
    return [float(f"{v:.6g}") for v in np.linspace(low, high, points)]


def grid_space(space: dict[str, SearchDistribution], trials: int) -> dict[str, list[Any]]:
    """A grid of about ``trials`` points: every choice of the categorical keys, and the same
    number of points (at least 2) along each numeric key."""
    categorical = math.prod(len(d.choices) for d in space.values() if d.is_choice)
    numeric = sum(not d.is_choice for d in space.values())
    points = max(2, int((trials / categorical) ** (1 / numeric) + 1e-9)) if numeric else 0
    return {key: grid_values(d, points) for key, d in space.items()}


def make_sampler(name: str, space: dict[str, SearchDistribution], trials: int, seed: int) -> tuple[BaseSampler, int]:
    """The Optuna sampler for ``--sampler`` and how many trials it can give (a grid is finite)."""
    if name == "random":
        return TrialSeededRandomSampler(seed), trials
    if name == "tpe":
        # TPE chooses from the study's history, so processes sharing a study choose differently
        # anyway; the process id keeps their first random draws apart.
        return TPESampler(seed=(seed * 1_000_003 + os.getpid()) % 2**32), trials
    if name == "grid":
        grid = grid_space(space, trials)
        return GridSampler(grid, seed=seed), min(trials, math.prod(len(v) for v in grid.values()))
    raise BabysitError(f"--sampler: must be one of {', '.join(SAMPLERS)}; got {name!r}")


# --------------------------------------------------------------------------- refine


def refine_space(space: dict[str, SearchDistribution], finished: list[FrozenTrial],
                 maximize: bool = False) -> dict[str, SearchDistribution]:
    """A finer space around the best finished trials (coarse to fine): the range each key
    spans in the best 20% (at least 3) of ``finished``, widened a little (x/÷2 for log
    ranges, 10% of the original width for linear ones) and kept inside the original range;
    a choice keeps the values the best trials used. The best have the lowest value, or the
    highest with ``maximize``.

    Example
    -------
    >>> import optuna
    >>> from babysit.config import parse_distribution
    >>> space = {"optimizer.lr": parse_distribution("loguniform(1e-5, 1)")}
    >>> d = space["optimizer.lr"]
    >>> trials = [optuna.trial.create_trial(params={"optimizer.lr": lr}, distributions={"optimizer.lr":
    ...           optuna_distribution(d)}, value=v) for lr, v in [(1e-3, 0.5), (2e-3, 0.4), (4e-3, 0.6), (0.5, 2.0)]]
    >>> refine_space(space, trials)["optimizer.lr"]
    SearchDistribution(kind='loguniform', low=0.0005, high=0.008, choices=())
    """
    ranked = sorted((t for t in finished if t.value is not None and math.isfinite(t.value)),
                    key=lambda t: -t.value if maximize else t.value)
    top = ranked[:max(3, math.ceil(REFINE_TOP_FRACTION * len(ranked)))]
    refined = {}
    for key, d in space.items():
        if d.is_choice:
            encoded = [encode_choice(c) for c in d.choices]
            used = {t.params[key] for t in top if key in t.params}
            refined[key] = SearchDistribution("choice", choices=tuple(c for c, e in zip(d.choices, encoded, strict=True)
                                                                      if e in used) or d.choices)
            continue
        values = [t.params[key] for t in top if key in t.params]
        if not values:
            refined[key] = d
            continue
        if d.log:
            low, high = max(d.low, min(values) / REFINE_LOG_MARGIN), min(d.high, max(values) * REFINE_LOG_MARGIN)
        else:
            margin = REFINE_LINEAR_MARGIN * (d.high - d.low)
            low, high = max(d.low, min(values) - margin), min(d.high, max(values) + margin)
        if d.is_integer:
            low, high = int(math.floor(low)), int(math.ceil(high))
        else:
            low, high = float(f"{low:.6g}"), float(f"{high:.6g}")
        refined[key] = SearchDistribution(d.kind, low=low, high=high) if low < high else d
    return refined


# --------------------------------------------------------------------------- as JSON and as text


def space_to_json(space: dict[str, SearchDistribution]) -> dict[str, Any]:
    """``space`` as JSON values (a study's user attribute), under the NaN-as-null policy.

    Example
    -------
    >>> space_to_json(parse_space({"model.hidden": "choice([16], [32])"}))
    {'model.hidden': {'kind': 'choice', 'low': None, 'high': None, 'choices': [[16], [32]]}}
    """
    return jsonable({k: {"kind": d.kind, "low": d.low, "high": d.high, "choices": list(d.choices)}
                     for k, d in space.items()})


def space_from_json(raw: dict[str, Any]) -> dict[str, SearchDistribution]:
    """The space :func:`space_to_json` wrote.

    Example
    -------
    >>> space = parse_space({"optimizer.lr": "loguniform(1e-4, 1)", "model.activation": "choice(relu, tanh)"})
    >>> space_from_json(space_to_json(space)) == space
    True
    """
    return {k: SearchDistribution(v["kind"], low=v["low"], high=v["high"], choices=tuple(v["choices"]))
            for k, v in raw.items()}


def describe(distribution: SearchDistribution) -> str:
    """The spec text of a distribution, e.g. ``loguniform(0.001, 0.1)``."""
    if distribution.is_choice:
        return f"choice({', '.join(dumps(c) if not isinstance(c, str) else c for c in distribution.choices)})"
    return f"{distribution.kind}({distribution.low:g}, {distribution.high:g})"


__all__ = ["REFINE_LINEAR_MARGIN", "REFINE_LOG_MARGIN", "REFINE_TOP_FRACTION", "SAMPLERS",
           "TrialSeededRandomSampler", "decode_params", "describe", "encode_choice", "grid_space", "grid_values",
           "make_sampler", "optuna_distribution", "parse_space", "refine_space", "space_from_json",
           "space_to_json", "suggest"]
