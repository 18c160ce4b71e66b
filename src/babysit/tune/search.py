"""Hyperparameter search on Optuna: sample the spec's ``search:`` space, train each trial with
the runner, prune the hopeless and the diverging, refine around the best.

Tuning is trial and error done with some sense (CS231n, "Hyperparameter optimization";
Bergstra & Bengio 2012): random search beats a grid when only a few of the knobs matter,
scales such as the learning rate and weight decay are searched in log space, a coarse
stage over wide ranges comes first and a fine stage around the best trials after it, and
trials that are clearly going nowhere are stopped early.

What babysit adds to Optuna is small:

- the space comes from the spec (``search: {optimizer.lr: loguniform(1e-4, 1)}``,
  :func:`babysit.config.parse_distribution`) and every trial is an ordinary run of
  :func:`babysit.train.runner.run` in ``DIR/trials/<number>/``;
- :class:`DivergencePruner` prunes a trial whose validation loss is not finite or above
  3x its value at initialization (the explosion rule of :mod:`babysit.checks.monitors`),
  before it asks the pruner it wraps (Optuna's :class:`~optuna.pruners.MedianPruner` on
  the validation loss): a trial that diverges during the median rule's warm-up is pruned
  with its reason (the trial's ``pruned_reason`` user attribute), not failed on a NaN;
- :class:`TrialSeededRandomSampler`: Optuna's random sampling, reseeded from the trial's
  number, so trial *n* draws the same values whichever process runs it and processes
  sharing a study never repeat each other's draws;
- ``trials`` is the size of the whole study, however many processes share it (see
  :func:`run_stage`), and ``--refine`` adds a second study around the best trials.

A trial is scored by the metric the spec's early stopping watches
(``train.early_stopping.monitor``; its validation counterpart): the lowest validation loss
it reached, or the highest validation accuracy when the spec monitors accuracy, which is
the epoch whose weights the run keeps (the mean over folds with ``folds``). The median rule
compares validation losses either way. Every trial trains with the spec's seed, so trials
differ by their hyperparameters, not by luck.

Storage is Optuna's: by default a journal file, ``DIR/journal.log`` (Optuna's advice for
several processes on one machine), else any Optuna storage URL (``sqlite:///...``,
``postgresql://user@host/db`` for several machines).

Example
-------
>>> import tempfile
>>> from babysit.config import Experiment
>>> spec = Experiment(data={"source": "spirals", "samples": 150}, train={"epochs": 2},
...                   search={"optimizer.lr": "loguniform(0.01, 1)"})
>>> result = search(spec, trials=2, out=tempfile.mkdtemp(), quiet=True)
>>> len(result.rows), sorted(result.best_params)
(2, ['optimizer.lr'])
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import re
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner, MedianPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from babysit import data as data_module
from babysit.config import Experiment, SearchDistribution, parse_distribution, set_dotted, validate
from babysit.data import Split, Splits
from babysit.data.preprocess import Preprocessor
from babysit.errors import BabysitError
from babysit.train.loop import Callback, Trainer, evaluate
from babysit.train.runner import run

SAMPLERS = ("random", "grid", "tpe")
DIVERGENCE_FACTOR = 3.0  # CS231n: a loss above ~3x its initial value has exploded (checks.monitors uses the same)
MEDIAN_STARTUP_TRIALS = 5  # the median rule starts once this many trials have finished
MEDIAN_WARMUP_FRACTION = 0.1  # ... and judges a trial only after 10% of its epochs (slow starters are not losers)
REFINE_TOP_FRACTION = 0.2  # --refine narrows the space to the best 20% of the finished trials (at least 3)
REFINE_LOG_MARGIN = 2.0  # ... widened by this factor either side for log ranges
REFINE_LINEAR_MARGIN = 0.1  # ... and by this share of the original width for linear ones
STORAGE_ATTEMPTS = 5  # tries to open a database storage (see open_storage)
FAILURES_IN_A_ROW = 3  # a search stops when this many trials in a row fail on a user error
_SURPLUS = "surplus"  # user attribute of a trial created after the study had its number of trials


# --------------------------------------------------------------------------- pruning


def divergence_reason(value: float, initial: float | None, factor: float = DIVERGENCE_FACTOR,
                      where: str = "") -> str | None:
    """Why a validation loss ``value`` means the trial diverged, or None when it did not: the
    loss is not finite, or above ``factor`` times ``initial``, its value at initialization.

    Example
    -------
    >>> divergence_reason(7.5, initial=2.3, where=" at epoch 1")
    'validation loss 7.5 at epoch 1 is above 3x its initial 2.3: the trial diverged'
    >>> divergence_reason(1.1, initial=2.3) is None
    True
    """
    if not math.isfinite(value):
        return f"validation loss is {value}{where}: the trial diverged"
    if initial is not None and math.isfinite(initial) and initial > 0 and value > factor * initial:
        return f"validation loss {value:.4g}{where} is above {factor:g}x its initial {initial:.4g}: the trial diverged"
    return None


class DivergencePruner(BasePruner):
    """Prunes a trial whose last reported validation loss is not finite or above ``factor``
    times its value at initialization (the trial's ``initial_val_loss`` user attribute), and
    otherwise asks ``wrapped`` (default: Optuna's MedianPruner), which compares the reported
    validation losses as losses (lower is better) whatever the study's direction.

    The divergence test comes first and has no warm-up: the median rule waits for
    ``n_startup_trials`` finished trials and ``n_warmup_steps`` epochs, and a trial that
    turns to NaN in that time would otherwise run on and fail.

    Example
    -------
    >>> import optuna
    >>> study = optuna.create_study(pruner=DivergencePruner())
    >>> trial = study.ask()
    >>> trial.set_user_attr("initial_val_loss", 2.3)
    >>> trial.report(9.0, step=1)
    >>> trial.should_prune()
    True
    """

    def __init__(self, wrapped: BasePruner | None = None, factor: float = DIVERGENCE_FACTOR):
        self.wrapped = wrapped if wrapped is not None else MedianPruner()
        self.factor = factor

    def divergence(self, trial: FrozenTrial) -> str | None:
        """The reason ``trial`` diverged at its last reported step, or None."""
        step = trial.last_step
        if step is None:
            return None
        return divergence_reason(trial.intermediate_values[step], trial.user_attrs.get("initial_val_loss"),
                                 self.factor, f" at step {step}")

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.divergence(trial) is not None or self.wrapped.prune(_LossView(study), trial)


class _LossView:
    """The study as the wrapped pruner sees it: the reported values are validation losses, lower
    is better, even when the study maximizes its score (a validation accuracy). Optuna's
    median and percentile rules read only ``direction`` and ``get_trials`` from a study."""

    direction = optuna.study.StudyDirection.MINIMIZE

    def __init__(self, study: optuna.Study):
        self._study = study

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return self._study.get_trials(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class TrialReporter(Callback):
    """A training callback that reports each epoch's validation loss to an Optuna trial and
    stops the run cleanly (``trainer.state.stop``) when the study's pruner says so.

    ``val`` is the validation split the run measures (the reporter measures it once more, on
    the initialised network, for the divergence rule's reference); ``step_offset`` shifts the
    reported steps (fold k of a cross-validated trial reports from ``k * epochs``). It keeps
    the lowest validation loss and the highest validation accuracy of the run.
    """

    def __init__(self, trial: optuna.Trial, val: Split, step_offset: int = 0,
                 factor: float = DIVERGENCE_FACTOR):
        self.trial = trial
        self.val = val
        self.step_offset = step_offset
        self.factor = factor
        self.initial: float | None = None
        self.best = {"val_loss": math.inf, "val_acc": -math.inf}
        self.pruned_reason: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        device = next(trainer.model.parameters()).device
        measured = evaluate(trainer.model, trainer.loss_fn, self.val.to(device), autocast=trainer.autocast)
        self.initial = measured["loss"]
        self.trial.set_user_attr("initial_val_loss", self.initial)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        value = logs.get("val_loss")
        if value is None:
            return
        epoch = trainer.state.epoch
        self.trial.report(value, self.step_offset + epoch)
        if math.isfinite(value):
            self.best["val_loss"] = min(self.best["val_loss"], value)
        if "val_acc" in logs:
            self.best["val_acc"] = max(self.best["val_acc"], logs["val_acc"])
        reason = None
        if trainer.state.diverged:  # the run's own explosion guard (checks.monitors) stopped it
            reason = trainer.state.stop_reason or "the explosion guard stopped the run"
        elif self.trial.should_prune():
            reason = divergence_reason(value, self.initial, self.factor, f" at epoch {epoch}") or (
                f"median rule: the best validation loss by epoch {epoch} ({self.best['val_loss']:.4g}) is worse "
                f"than the median of the finished trials at that epoch")
        if reason is not None:
            self.pruned_reason = reason
            trainer.state.stop = True
            trainer.state.stop_reason = f"pruned by the search: {reason}"


# --------------------------------------------------------------------------- sampling


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


def _encode_choice(value: Any) -> Any:
    """Optuna's categorical values are None, bool, int, float or str; lists go in as JSON."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def optuna_distribution(distribution: SearchDistribution) -> BaseDistribution:
    """The Optuna distribution of one ``search:`` entry.

    Example
    -------
    >>> from babysit.config import parse_distribution
    >>> optuna_distribution(parse_distribution("loguniform(1e-4, 1)"))
    FloatDistribution(high=1.0, log=True, low=0.0001, step=None)
    """
    if distribution.kind == "choice":
        return CategoricalDistribution([_encode_choice(c) for c in distribution.choices])
    if distribution.kind == "intuniform":
        return IntDistribution(int(distribution.low), int(distribution.high))
    return FloatDistribution(float(distribution.low), float(distribution.high), log=distribution.log)


def suggest(trial: optuna.Trial, key: str, distribution: SearchDistribution) -> Any:
    """Draw ``key`` for ``trial``; returns the value the spec takes (a list for a list choice)."""
    if distribution.kind == "choice":
        encoded = [_encode_choice(c) for c in distribution.choices]
        drawn = trial.suggest_categorical(key, encoded)
        return distribution.choices[encoded.index(drawn)]
    if distribution.kind == "intuniform":
        return trial.suggest_int(key, int(distribution.low), int(distribution.high))
    return trial.suggest_float(key, float(distribution.low), float(distribution.high), log=distribution.log)


def grid_values(distribution: SearchDistribution, points: int) -> list[Any]:
    """Values of one key on a grid: every choice, or ``points`` values spread over the range
    (geometrically for loguniform).

    Example
    -------
    >>> from babysit.config import parse_distribution
    >>> grid_values(parse_distribution("loguniform(1e-4, 1e-2)"), 3)
    [0.0001, 0.001, 0.01]
    """
    if distribution.kind == "choice":
        return [_encode_choice(c) for c in distribution.choices]
    low, high = distribution.low, distribution.high
    if distribution.kind == "intuniform":
        return sorted({int(round(v)) for v in np.linspace(low, high, min(points, int(high - low) + 1))})
    if distribution.log:
        return [float(f"{v:.6g}") for v in np.geomspace(low, high, points)]
    return [float(f"{v:.6g}") for v in np.linspace(low, high, points)]


def grid_space(space: dict[str, SearchDistribution], trials: int) -> dict[str, list[Any]]:
    """A grid of about ``trials`` points: every choice of the categorical keys, and the same
    number of points (at least 2) along each numeric key."""
    categorical = math.prod(len(d.choices) for d in space.values() if d.kind == "choice")
    numeric = sum(d.kind != "choice" for d in space.values())
    points = max(2, int((trials / categorical) ** (1 / numeric) + 1e-9)) if numeric else 0
    return {key: grid_values(d, points) for key, d in space.items()}


def make_sampler(kind: str, space: dict[str, SearchDistribution], trials: int, seed: int) -> tuple[BaseSampler, int]:
    """The Optuna sampler for ``--sampler`` and how many trials it can give (a grid is finite)."""
    if kind == "random":
        return TrialSeededRandomSampler(seed), trials
    if kind == "tpe":
        # TPE chooses from the study's history, so processes sharing a study choose differently
        # anyway; the process id keeps their first random draws apart.
        return TPESampler(seed=(seed * 1_000_003 + os.getpid()) % 2**32), trials
    if kind == "grid":
        grid = grid_space(space, trials)
        return GridSampler(grid, seed=seed), min(trials, math.prod(len(v) for v in grid.values()))
    raise BabysitError(f"--sampler: must be one of {', '.join(SAMPLERS)}; got {kind!r}")


# --------------------------------------------------------------------------- data


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
    pooled = data_module.load(spec.data.model_copy(update={"val_fraction": 0.0, "preprocess": []}), spec.seed)
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


class _DataCache:
    """The splits of each distinct ``data`` section (trials searching only the optimizer share one)."""

    def __init__(self, folds: int | None):
        self.folds = folds
        self._cache: dict[str, list[Splits]] = {}

    def splits(self, spec: Experiment) -> list[Splits]:
        key = json.dumps([spec.seed, spec.data.model_dump(mode="json")], sort_keys=True)
        if key not in self._cache:
            if self.folds:
                self._cache[key] = cross_validation_folds(spec, self.folds)
            else:
                splits = data_module.load(spec.data, spec.seed)
                if splits.val is None or not len(splits.val):
                    raise BabysitError("search: trials are scored on the validation split; set data.val_fraction > 0 "
                                       "or pass --folds K")
                self._cache[key] = [splits]
        return self._cache[key]


# --------------------------------------------------------------------------- trials


def trial_spec(base: Experiment, params: dict[str, Any], name: str) -> Experiment:
    """The spec a trial trains: ``base`` without its search section, with ``params`` set.

    Trials run without the preflight checks and live monitors (the pruner watches them; the
    preflight is the same for every trial): ``babysit check`` the spec once instead.
    """
    raw = base.to_dict()
    raw.pop("search", None)
    for key, value in params.items():
        set_dotted(raw, key.split("."), value)
    raw["name"] = name
    raw["checks"] = {**raw["checks"], "preflight": False, "monitors": False}
    return validate(raw)


def best_spec(base: Experiment, params: dict[str, Any]) -> Experiment:
    """``base`` with ``params`` set and no search section: ready for ``babysit train``."""
    raw = base.to_dict()
    raw.pop("search", None)
    for key, value in params.items():
        set_dotted(raw, key.split("."), value)
    raw["name"] = f"{base.run_name}-best"
    return validate(raw)


class SurplusTrial(Exception):
    """A trial created after the study already had its number of trials (another process
    started the last one a moment earlier): it is marked failed and never trained."""


@dataclass
class Stage:
    """One study of a search: the coarse one, or the refine study around its best trials."""

    name: str  # "coarse" | "refine"
    study: optuna.Study
    space: dict[str, SearchDistribution]
    trials: int
    folder: Path
    metric: str = "val_loss"  # what trials are scored by: val_loss (minimized) or val_acc (maximized)


def _count_toward_total(study: optuna.Study, below: int | None = None) -> int:
    """Trials that count toward the study's total: all but the failed ones (a failed or
    interrupted trial is made up for), optionally only those numbered below ``below``."""
    return sum(t.state != TrialState.FAIL for t in study.get_trials(deepcopy=False)
               if below is None or t.number < below)


def _record(trial: optuna.Trial, reached: dict[str, list[float]], epochs: int) -> dict[str, float]:
    """Store what a trial reached (the mean over the folds it ran) as user attributes; returns it."""
    scored = {metric: float(np.mean(values)) for metric, values in reached.items() if values}
    for metric, value in scored.items():
        trial.set_user_attr(metric, value)
    trial.set_user_attr("epochs", epochs)
    return scored


def _metrics_text(scored: dict[str, float]) -> str:
    return ", ".join(f"{m} {v:.2%}" if m == "val_acc" else f"{m} {v:.4f}" for m, v in scored.items())


def score_metric_of(spec: Experiment, task: str) -> str:
    """What trials are scored by: ``val_acc`` when the spec's early stopping watches an
    accuracy (and the task has one), else ``val_loss``."""
    return "val_acc" if spec.train.early_stopping.monitor.endswith("acc") and task == "classification" else "val_loss"


def _objective(stage: Stage, base: Experiment, data: _DataCache, out: Path, stream: Any, quiet: bool,
               score_metric: str) -> Any:
    def objective(trial: optuna.Trial) -> float:
        if _count_toward_total(stage.study, below=trial.number) >= stage.trials:
            trial.set_user_attr(_SURPLUS, True)
            raise SurplusTrial(f"the study already had {stage.trials} trials")
        started = time.perf_counter()
        params = {key: suggest(trial, key, distribution) for key, distribution in stage.space.items()}
        spec = trial_spec(base, params, f"{base.run_name}-{stage.name}-{trial.number}")
        folder = stage.folder / str(trial.number)
        trial.set_user_attr("run_dir", os.path.relpath(folder, out))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process trained it
        try:
            folds = data.splits(spec)
        except BabysitError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        reached: dict[str, list[float]] = {"val_loss": [], "val_acc": []}
        epochs = 0
        for k, splits in enumerate(folds):
            reporter = TrialReporter(trial, splits.val, step_offset=k * (spec.train.epochs + 1))
            run_dir = folder if len(folds) == 1 else folder / f"fold-{k}"
            try:
                result = run(spec, run_dir, quiet=True, extra_callbacks=[reporter], splits=splits, report=False)
            except BabysitError as exc:  # e.g. drawn values the network builder refuses: this trial fails
                trial.set_user_attr("fail_reason", str(exc))
                raise
            epochs += result.summary["epochs"]
            for metric, value in reporter.best.items():
                if math.isfinite(value):
                    reached[metric].append(value)
            if reporter.pruned_reason is not None:
                _record(trial, reached, epochs)
                trial.set_user_attr("pruned_reason", reporter.pruned_reason)
                _say(stream, quiet, f"{stage.name} trial {trial.number}: pruned after {epochs} epoch{'s' * (epochs != 1)} "
                     f"({_params_text(params)}): {reporter.pruned_reason}")
                raise optuna.TrialPruned(reporter.pruned_reason)
        scored = _record(trial, reached, epochs)
        if score_metric not in scored:
            raise BabysitError(f"search: trial {trial.number} has no {score_metric} to be scored by")
        _say(stream, quiet, f"{stage.name} trial {trial.number}: {_metrics_text(scored)} ({_params_text(params)}) "
             f"in {time.perf_counter() - started:.1f} s")
        return scored[score_metric]

    return objective


def run_stage(stage: Stage, base: Experiment, data: _DataCache, out: Path, stream: Any = None,
              quiet: bool = False) -> None:
    """Run trials until ``stage.study`` holds ``stage.trials`` of them, counting those of every
    process sharing the study (``--trials`` is the study's size, not this process's share).

    A trial is numbered by the storage when it is created; one that finds the study already
    full (two processes started the last trial at the same moment) is marked failed with
    the ``surplus`` user attribute and not trained, so at most ``trials`` trials train.
    """
    if _count_toward_total(stage.study) == 0 and stage.folder.exists() and any(stage.folder.iterdir()):
        raise BabysitError(f"{stage.folder}: holds trials of an earlier study; choose another --out or --study, "
                           f"or remove that folder")
    objective = _objective(stage, base, data, out, stream, quiet, stage.metric)
    failures = 0
    while _count_toward_total(stage.study) < stage.trials:
        study_size = len(stage.study.get_trials(deepcopy=False))
        stage.study.optimize(objective, n_trials=1, catch=(BabysitError, SurplusTrial))
        mine = [t for t in stage.study.get_trials(deepcopy=False) if t.number >= study_size]
        failed = [t for t in mine if t.state == TrialState.FAIL and not t.user_attrs.get(_SURPLUS)]
        if failed:
            failures += 1
            reason = failed[-1].user_attrs.get("fail_reason", "failed")
            _say(stream, quiet, f"{stage.name} trial {failed[-1].number}: failed: {reason}")
            if failures >= FAILURES_IN_A_ROW:
                raise BabysitError(f"search: {failures} trials in a row failed; the last: {reason}")
        else:
            failures = 0


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
        if d.kind == "choice":
            encoded = [_encode_choice(c) for c in d.choices]
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
        if d.kind == "intuniform":
            low, high = int(math.floor(low)), int(math.ceil(high))
        else:
            low, high = float(f"{low:.6g}"), float(f"{high:.6g}")
        refined[key] = SearchDistribution(d.kind, low=low, high=high) if low < high else d
    return refined


def _space_to_json(space: dict[str, SearchDistribution]) -> dict[str, Any]:
    return {k: {"kind": d.kind, "low": d.low, "high": d.high, "choices": list(d.choices)} for k, d in space.items()}


def _space_from_json(raw: dict[str, Any]) -> dict[str, SearchDistribution]:
    return {k: SearchDistribution(v["kind"], low=v["low"], high=v["high"], choices=tuple(v["choices"]))
            for k, v in raw.items()}


def describe(distribution: SearchDistribution) -> str:
    """The spec text of a distribution, e.g. ``loguniform(0.001, 0.1)``."""
    if distribution.kind == "choice":
        return f"choice({', '.join(json.dumps(c) if not isinstance(c, str) else c for c in distribution.choices)})"
    return f"{distribution.kind}({distribution.low:g}, {distribution.high:g})"


# --------------------------------------------------------------------------- storage


def journal_storage(path: Path) -> optuna.storages.BaseStorage:
    """Optuna's journal storage on a file: safe for several processes on one machine (file
    locks; Optuna's FAQ advises it over SQLite for parallel work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from optuna.storages.journal import JournalFileBackend as Backend  # Optuna >= 4.0
    except ImportError:  # Optuna 3.x
        from optuna.storages import JournalFileStorage as Backend  # type: ignore[no-redef]
    return optuna.storages.JournalStorage(Backend(str(path)))


def hide_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str | None, out: Path) -> tuple[optuna.storages.BaseStorage | str, str]:
    """The storage to use and how to name it: the journal file ``out/journal.log`` by default,
    else the Optuna storage ``url`` (connection problems are one-line errors)."""
    if url is None:
        path = out / "journal.log"
        return journal_storage(path), str(path)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.get_storage(url), hide_password(url)
        except Exception as exc:  # noqa: BLE001 (sqlalchemy and drivers raise many kinds; the user needs one line)
            # processes starting together on an empty database race to create Optuna's tables: the
            # loser gets an IntegrityError (a duplicate row) or a ProgrammingError (PostgreSQL's
            # DuplicateTable: 'relation ... already exists'), and the tables are there when it tries again
            lost_race = type(exc).__name__ == "IntegrityError" or "already exists" in str(exc)
            if lost_race and attempt + 1 < STORAGE_ATTEMPTS:
                time.sleep(0.5 + random.random())
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BabysitError(f"--storage {hide_password(url)}: cannot open it ({type(exc).__name__}: {first})") from None
    raise AssertionError("unreachable")


def _study(storage: Any, name: str, sampler: BaseSampler, pruner: BasePruner, metric: str) -> optuna.Study:
    """Create or load the study; one that was started scoring by another metric is refused."""
    direction = "maximize" if metric == "val_acc" else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise BabysitError(f"--study {name}: this study {study.direction.name.lower()}s its score, this spec "
                           f"{direction}s {metric} (train.early_stopping.monitor); pass a new --study NAME")
    return study


# --------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    """What a search found: the best trial's parameters, score and spec, every trial as a row,
    and the files written (``best.yaml``, ``trials.csv``, ``trials.json``, ``search.png``)."""

    study: str
    storage: str
    out: Path
    space: dict[str, SearchDistribution]
    rows: list[dict[str, Any]]
    metric: str  # what trials are scored by: val_loss (lower is better) or val_acc (higher)
    best_params: dict[str, Any]
    best_value: float | None
    best_trial: dict[str, Any] | None
    best_spec: Experiment | None
    files: dict[str, Path] = field(default_factory=dict)
    refine_space: dict[str, SearchDistribution] | None = None


def search(
    spec: Experiment,
    trials: int = 20,
    *,
    storage: str | None = None,
    study: str | None = None,
    refine: bool = False,
    sampler: str = "random",
    folds: int | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    stream: Any = None,
) -> SearchResult:
    """Search the spec's ``search:`` space: ``trials`` trials in the study (shared with any
    other process on the same storage and study), a second stage of ``trials`` around the
    best with ``refine``; writes ``out`` (default ``runs/<name>-search``, or ``runs/<name>``
    when the name ends in ``-search``) and returns the result.
    """
    if not spec.search:
        raise BabysitError("search: the spec has no search section; add one, e.g. "
                           "search: {optimizer.lr: loguniform(1e-4, 1), optimizer.weight_decay: loguniform(1e-6, 1e-2)}")
    if trials < 1:
        raise BabysitError(f"--trials: must be >= 1; got {trials}")
    if folds is not None and folds < 2:
        raise BabysitError(f"--folds: K-fold cross-validation needs K >= 2; got {folds}")
    if sampler not in SAMPLERS:
        raise BabysitError(f"--sampler: must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if spec.model.kind == "gan":
        raise BabysitError("search: a gan has no validation loss to score trials by; search its parts' specs instead")
    if out is None:  # runs/<name>-search (runs/<name> for a spec already named *-search)
        out = Path("runs") / (spec.run_name if spec.run_name.endswith("-search") else f"{spec.run_name}-search")
    out = Path(out)
    name = study or spec.run_name
    space = {key: parse_distribution(text) for key, text in spec.search.items()}
    store, storage_name = open_storage(storage, out)  # a storage that cannot be opened leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    data = _DataCache(folds)
    splits = data.splits(trial_spec(spec, {}, spec.run_name))  # data problems show now, in one line
    metric = score_metric_of(spec, splits[0].task)
    epochs = spec.train.epochs * (folds or 1)

    def pruner() -> DivergencePruner:
        return DivergencePruner(MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                             n_warmup_steps=max(1, round(MEDIAN_WARMUP_FRACTION * spec.train.epochs))))

    refined = None
    with _optuna_quiet():
        chosen, n = make_sampler(sampler, space, trials, spec.seed)
        if n < trials:
            _say(stream, quiet, f"note: the grid has {n} points; the study stops there")
        coarse = Stage("coarse", _study(store, name, chosen, pruner(), metric), space, n, out / "trials", metric)
        _check_same_space(coarse.study, spec.search, name)
        _say(stream, quiet, f"search: study {name!r} in {storage_name}, {n} trials of up to {epochs} epochs, "
             f"{sampler} sampler, scored by {metric} ({'higher' if metric == 'val_acc' else 'lower'} is better)")
        run_stage(coarse, spec, data, out, stream, quiet)
        stages = [coarse]
        if refine:
            refine_study = _study(store, f"{name}-refine", make_sampler(sampler, space, trials, spec.seed + 1)[0],
                                  pruner(), metric)
            refined = _shared_refine_space(refine_study, space, coarse.study)
            if refined is None:
                _say(stream, quiet, "refine: skipped; it needs at least 2 finished trials")
            else:
                sampler_refined, n_refined = make_sampler(sampler, refined, trials, spec.seed + 1)
                refine_study.sampler = sampler_refined
                _say(stream, quiet, "refine: " + ", ".join(f"{k} {describe(d)}" for k, d in refined.items()))
                stage = Stage("refine", refine_study, refined, n_refined, out / "refine", metric)
                run_stage(stage, spec, data, out, stream, quiet)
                stages.append(stage)
    result = _collect(spec, name, storage_name, out, space, stages, refined, metric)
    result.files = write_search(result, spec)
    return result


def _check_same_space(study: optuna.Study, search_section: dict[str, Any], name: str) -> None:
    """A study keeps the space it started with; resuming it with another is a mistake."""
    saved = study.user_attrs.get("search")
    if saved is None:
        study.set_user_attr("search", dict(search_section))
    elif saved != dict(search_section):
        raise BabysitError(f"--study {name}: this study was started with another search space ({saved}); "
                           f"pass a new --study NAME")


def _shared_refine_space(refine_study: optuna.Study, space: dict[str, SearchDistribution],
                         coarse: optuna.Study) -> dict[str, SearchDistribution] | None:
    """The refine space, the same for every process: the first process to get here stores it
    in the refine study, the others read it from there."""
    saved = refine_study.user_attrs.get("space")
    if saved is not None:
        return _space_from_json(saved)
    finished = coarse.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(finished) < 2:
        return None
    refined = refine_space(space, finished, maximize=coarse.direction.name == "MAXIMIZE")
    refine_study.set_user_attr("space", _space_to_json(refined))
    return _space_from_json(refine_study.user_attrs.get("space", _space_to_json(refined)))


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna logs every trial (and a traceback for each failed one); babysit says one line per trial."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _say(stream: Any, quiet: bool, line: str) -> None:
    if not quiet:
        print(line, file=stream or sys.stdout, flush=True)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_format(value)}" for key, value in params.items())


def _decoded(params: dict[str, Any], space: dict[str, SearchDistribution]) -> dict[str, Any]:
    """A trial's parameters as the spec takes them (list choices back from their JSON text)."""
    values = {}
    for key, value in params.items():
        d = space.get(key)
        if d is not None and d.kind == "choice":
            encoded = [_encode_choice(c) for c in d.choices]
            value = d.choices[encoded.index(value)] if value in encoded else value
        values[key] = value
    return values


def _collect(spec: Experiment, name: str, storage_name: str, out: Path, space: dict[str, SearchDistribution],
             stages: list[Stage], refined: dict[str, SearchDistribution] | None, metric: str) -> SearchResult:
    """Every trial of the stages as a row: its parameters, the lowest validation loss and the
    highest validation accuracy it reached (``score`` is the one trials are scored by), its
    epochs and, when pruned or failed, why."""
    rows = []
    for stage in stages:
        for t in stage.study.get_trials(deepcopy=False):
            if t.user_attrs.get(_SURPLUS):
                continue
            row = {"stage": stage.name, "trial": t.number, "state": t.state.name.lower(),
                   **_decoded(t.params, stage.space),
                   "score": t.user_attrs.get(metric), "val_loss": t.user_attrs.get("val_loss"),
                   "val_acc": t.user_attrs.get("val_acc"), "epochs": t.user_attrs.get("epochs"),
                   "pruned_reason": t.user_attrs.get("pruned_reason"), "run_dir": t.user_attrs.get("run_dir")}
            if t.state == TrialState.FAIL:
                row["pruned_reason"] = t.user_attrs.get("fail_reason", "failed")
            rows.append(row)
    sign = -1.0 if metric == "val_acc" else 1.0
    complete = [r for r in rows if r["state"] == "complete" and _finite(r["score"])]
    best = min(complete, key=lambda r: sign * r["score"]) if complete else None
    best_params = {key: best[key] for key in space} if best else {}
    return SearchResult(study=name, storage=storage_name, out=out, space=space, rows=rows, metric=metric,
                        best_params=best_params, best_value=best["score"] if best else None, best_trial=best,
                        best_spec=best_spec(spec, best_params) if best else None, refine_space=refined)


# --------------------------------------------------------------------------- output


def _write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``path`` through a temporary file and a rename: processes sharing a study may
    write the same outputs, and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_search(result: SearchResult, spec: Experiment) -> dict[str, Path]:
    """Write ``best.yaml`` (when a trial finished), ``trials.csv``, ``trials.json`` and ``search.png``."""
    out = result.out
    files: dict[str, Path] = {}
    if result.best_spec is not None and result.best_trial is not None:
        b = result.best_trial
        header = (f"# found by babysit search: study {result.study}, {b['stage']} trial {b['trial']}, "
                  f"{_metrics_text(_reached(b))}\n# train it: babysit train {out / 'best.yaml'}\n")
        _write_atomic(out / "best.yaml", header + yaml.safe_dump(result.best_spec.to_dict(), sort_keys=False))
        files["best"] = out / "best.yaml"
    columns = ["stage", "trial", "state", *result.space, "score", "val_loss", "val_acc", "epochs", "pruned_reason",
               "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    _write_atomic(out / "trials.csv", buffer.getvalue())
    files["csv"] = out / "trials.csv"
    summary = {
        "study": result.study, "storage": result.storage, "space": spec.search, "score": result.metric,
        "refine_space": {k: describe(d) for k, d in result.refine_space.items()} if result.refine_space else None,
        "best": result.best_trial, "trials": result.rows,
    }
    _write_atomic(out / "trials.json", json.dumps(summary, indent=2, default=_json_safe, allow_nan=False) + "\n")
    files["json"] = out / "trials.json"
    figure = search_figure(result)
    if figure is not None:
        from babysit.report.figures import png_bytes

        _write_atomic(out / "search.png", png_bytes(figure, dpi=100))
        files["figure"] = out / "search.png"
    return files


def _json_safe(value: Any) -> Any:
    return str(value)


def _reached(row: dict[str, Any]) -> dict[str, float]:
    return {m: row[m] for m in ("val_loss", "val_acc") if _finite(row.get(m))}


def search_figure(result: SearchResult) -> Any:
    """The score (best validation loss, or accuracy) against each searched key, one panel per
    key (log x axis for log ranges): finished trials as dots (the best as a star), pruned ones
    as grey crosses at the best they reached, clipped to the edge of the panel when off it."""
    from matplotlib.figure import Figure

    finished = [r for r in result.rows if r["state"] == "complete" and _finite(r["score"])]
    if not finished or not result.space:
        return None
    keys = list(result.space)
    fig = Figure(figsize=(4.0 * len(keys), 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    scores = [r["score"] for r in finished]
    low, high = min(scores), max(scores)
    pad = 0.25 * max(high - low, 1e-3)
    bottom, top = (low - pad, high + 0.05 * pad) if result.metric == "val_acc" else (low - 0.05 * pad, high + pad)
    pruned = [r for r in result.rows if r["state"] == "pruned"]
    worst = bottom if result.metric == "val_acc" else top

    def clipped(value: Any) -> float:
        return min(max(value, bottom), top) if _finite(value) else worst

    for ax, key in zip(axes, keys, strict=True):
        d = result.space[key]
        labels = [_encode_choice(c) for c in d.choices] if d.kind == "choice" else None

        def x_of(row: dict[str, Any], labels: list[Any] | None = labels, key: str = key) -> float:
            value = row.get(key)
            return float(labels.index(_encode_choice(value))) if labels is not None else float(value)

        for stage, colour in (("coarse", "tab:blue"), ("refine", "tab:orange")):
            rows = [r for r in finished if r["stage"] == stage and r.get(key) is not None]
            if rows:
                ax.scatter([x_of(r) for r in rows], [r["score"] for r in rows], s=22, color=colour,
                           label=f"{stage} ({len(rows)})", zorder=3)
        shown = [r for r in pruned if r.get(key) is not None]
        if shown:
            ax.scatter([x_of(r) for r in shown], [clipped(r["score"]) for r in shown], marker="x", s=22,
                       color="0.55", label=f"pruned ({len(shown)})", zorder=2)
        best = result.best_trial
        if best is not None and best.get(key) is not None:
            ax.scatter([x_of(best)], [best["score"]], marker="*", s=160, color="tab:red", label="best", zorder=4)
        if d.log:
            ax.set_xscale("log")
        if labels is not None:
            ax.set_xticks(range(len(labels)), [str(c) for c in labels])
        ax.set_ylim(bottom - 0.02 * pad, top + 0.02 * pad)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"best {result.metric} reached")
    axes[0].legend(fontsize=7, loc="lower right" if result.metric == "val_acc" else "upper right")
    fig.suptitle(f"search {result.study}: {result.metric} against each hyperparameter", fontsize=10)
    fig.tight_layout()
    return fig


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def search_table(result: SearchResult, limit: int = 25) -> Any:
    """The trials as a rich table, best first (finished, then pruned, then failed)."""
    from rich.table import Table

    order = {"complete": 0, "pruned": 1, "running": 2, "fail": 3}
    sign = -1.0 if result.metric == "val_acc" else 1.0
    rows = sorted(result.rows, key=lambda r: (order.get(r["state"], 4),
                                              sign * r["score"] if _finite(r["score"]) else math.inf, r["trial"]))
    stages = len({r["stage"] for r in rows}) > 1
    better = "higher" if result.metric == "val_acc" else "lower"
    caption = f"scored by {result.metric} ({better} is better); * the best"
    if len(rows) > limit:
        caption += f"; {len(rows) - limit} more in trials.csv"
    table = Table(title=f"search {result.study}: {len(rows)} trials", title_justify="left", show_edge=False,
                  pad_edge=False, caption=caption, caption_justify="left")
    table.add_column("trial", justify="right")
    if stages:
        table.add_column("stage")
    for key in result.space:
        table.add_column(key, justify="right")
    show_acc = any(r.get("val_acc") is not None for r in rows)
    table.add_column("val_loss", justify="right")
    if show_acc:
        table.add_column("val_acc", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("state")
    best = result.best_trial
    for r in rows[:limit]:
        is_best = best is not None and (r["stage"], r["trial"]) == (best["stage"], best["trial"])
        cells = [str(r["trial"]) + (" *" if is_best else ""), *([r["stage"]] if stages else []),
                 *[_format(r.get(k)) if r.get(k) is not None else "" for k in result.space],
                 f"{r['val_loss']:.4f}" if _finite(r.get("val_loss")) else "",
                 *([f"{r['val_acc']:.2%}" if _finite(r.get("val_acc")) else ""] if show_acc else []),
                 str(r["epochs"] or ""), _short_state(r)]
        table.add_row(*cells, style="bold" if is_best else None)
    return table


def _short_state(row: dict[str, Any]) -> str:
    """The table's state: why a trial was pruned in a word (the full reason is in trials.csv)."""
    reason = row.get("pruned_reason") or ""
    if row["state"] == "pruned":
        return "pruned: diverged" if "diverged" in reason or "explo" in reason else (
            "pruned: median" if reason.startswith("median") else "pruned")
    return "failed" if row["state"] == "fail" else row["state"]


def search_lines(result: SearchResult) -> list[str]:
    """The lines ``babysit search`` prints after the table."""
    if result.best_trial is None:
        return ["best: none; no trial finished (all were pruned or failed), see trials.csv"]
    b = result.best_trial
    counts = ", ".join(f"{sum(r['state'] == s for r in result.rows)} {s}" for s in ("complete", "pruned", "fail")
                       if any(r["state"] == s for r in result.rows))
    lines = [f"trials: {counts}",
             f"best: {b['stage']} trial {b['trial']}, {_metrics_text(_reached(b))}: {_params_text(result.best_params)}"]
    if "best" in result.files:
        lines.append(f"best spec: {result.files['best']} (train it: babysit train {result.files['best']})")
    written = [result.files[k].name for k in ("csv", "json", "figure") if k in result.files]
    lines.append(f"wrote {', '.join(written)} in {result.out}")
    return lines
