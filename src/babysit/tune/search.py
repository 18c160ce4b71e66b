"""Hyperparameter search on Optuna: sample the spec's ``search:`` space, train each trial with
the runner, prune the hopeless and the diverging, refine around the best.

Tuning is trial and error done with some sense (CS231n, "Hyperparameter optimization";
Bergstra & Bengio 2012): random search beats a grid when only a few of the knobs matter,
scales such as the learning rate and weight decay are searched in log space, a coarse
stage over wide ranges comes first and a fine stage around the best trials after it, and
trials that are clearly going nowhere are stopped early.

What babysit adds to Optuna is small, one concern a module:

- :mod:`babysit.tune.space`: the space comes from the spec (``search: {optimizer.lr:
  loguniform(1e-4, 1)}``, :func:`babysit.config.parse_distribution`);
  :class:`~babysit.tune.space.TrialSeededRandomSampler` is Optuna's random sampling,
  reseeded from the trial's number, so trial *n* draws the same values whichever process
  runs it and processes sharing a study never repeat each other's draws; ``--refine`` adds a
  second study around the best trials (:func:`~babysit.tune.space.refine_space`);
- :mod:`babysit.tune.pruning`: :class:`~babysit.tune.pruning.DivergencePruner` prunes a
  trial whose validation loss is not finite or above 3x its value at initialization (the
  explosion rule of :mod:`babysit.checks.monitors`), before it asks the pruner it wraps
  (Optuna's :class:`~optuna.pruners.MedianPruner` on the validation loss): a trial that
  diverges during the median rule's warm-up is pruned with its reason (the trial's
  ``pruned_reason`` user attribute), not failed on a NaN;
- :mod:`babysit.tune.folds`: ``--folds K`` scores each trial by K-fold cross-validation;
- :mod:`babysit.tune.storage`: Optuna's storage, by default a journal file,
  ``DIR/journal.log`` (Optuna's advice for several processes on one machine), else any
  Optuna storage URL (``sqlite:///...``, ``postgresql://user@host/db`` for several machines);
- here: every trial is an ordinary run of :func:`babysit.run.run` in
  ``DIR/trials/<number>/``, ``trials`` is the size of the whole study, however many
  processes share it (see :func:`run_stage`), and the outputs (``best.yaml``,
  ``trials.csv``, ``trials.json``, ``search.png``, the table and lines babysit prints).

A trial is scored by the metric the spec's early stopping watches
(``train.early_stopping.monitor``; its validation counterpart): the lowest validation loss
it reached, or the highest validation accuracy when the spec monitors accuracy, which is
the epoch whose weights the run keeps (the mean over folds with ``folds``). The median rule
compares validation losses either way. Every trial trains with the spec's seed, so trials
differ by their hyperparameters, not by luck.

The names of the four modules above are importable from here too.

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
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from babysit.config import Experiment, SearchDistribution, set_dotted, validate
from babysit.errors import BabysitError, stop_behind
from babysit.families import family_of
from babysit.report.figures import png_bytes
from babysit.run import run
from babysit.rundir import dumps, write_bytes, write_json, write_text
from babysit.tune.folds import DataCache, cross_validation_folds
from babysit.tune.pruning import (
    DIVERGENCE_FACTOR,
    MEDIAN_STARTUP_TRIALS,
    MEDIAN_WARMUP_FRACTION,
    DivergencePruner,
    TrialReporter,
    divergence_reason,
    make_pruner,
)
from babysit.tune.space import (
    REFINE_LINEAR_MARGIN,
    REFINE_LOG_MARGIN,
    REFINE_TOP_FRACTION,
    SAMPLERS,
    TrialSeededRandomSampler,
    decode_params,
    describe,
    encode_choice,
    grid_space,
    grid_values,
    make_sampler,
    optuna_distribution,
    parse_space,
    refine_space,
    space_from_json,
    space_to_json,
    suggest,
)
from babysit.tune.storage import (
    STORAGE_ATTEMPTS,
    check_same_space,
    hide_password,
    journal_storage,
    open_storage,
    open_study,
)

# What a spec without a search section is told to add: YAML's block form, the line "search:"
# and under it one indented line a key, quoted here so it can be pasted line by line. (The
# flow form, search: {optimizer.lr: loguniform(1e-4, 1)}, cuts each distribution at its comma.)
SEARCH_EXAMPLE = ("search:", "  optimizer.lr: loguniform(1e-4, 1)", "  optimizer.weight_decay: loguniform(1e-6, 1e-2)")
NO_SEARCH_SECTION = (f"search: the spec has no search section; add one in YAML block form, the line '{SEARCH_EXAMPLE[0]}' "
                     f"and under it one indented line a key: {' and '.join(repr(line) for line in SEARCH_EXAMPLE[1:])} "
                     "(not {...} on one line: YAML cuts each distribution there at its comma)")
FAILURES_IN_A_ROW = 3  # a search stops when this many trials in a row fail (a user error, or a TrialFailed)
_SURPLUS = "surplus"  # user attribute of a trial created after the study had its number of trials
_DataCache = DataCache  # its name before the split (tests use it)


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


class TrialFailed(Exception):
    """A trial's training raised an exception that is not babysit's own (a library's
    RuntimeError on values nobody foresaw): the trial is marked failed with its reason, and
    the search goes on (see :func:`_failing_trial`)."""


FAIL_REASON_CHARS = 200  # a failed trial's reason: the exception's class and the first line of its message, cut here


def failure_reason(exc: BaseException) -> str:
    """One line for a failed trial: ``RuntimeError: the first line of its message``.

    Example
    -------
    >>> failure_reason(ValueError("Expected more than 1 value per channel\\nwhen training"))
    'ValueError: Expected more than 1 value per channel'
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > FAIL_REASON_CHARS:
        first = first[:FAIL_REASON_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def _failing_trial(trial: optuna.Trial) -> Iterator[None]:
    """Where the drawn values meet the data and the network, what goes wrong fails this trial
    with its reason in one line (the trial's ``fail_reason``): babysit's refusals as they are,
    any other exception as :func:`failure_reason` (raised as :class:`TrialFailed`, which
    :func:`run_stage` has Optuna catch). MemoryError, Ctrl-C and exits are not a trial's
    failure: they stop the search, also when a library's cleanup turned them into an error of
    its own on the way (:func:`stop_behind`)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (one trial's values broke something: the others may not)
        stop = stop_behind(exc)
        if stop is not None:
            raise stop from None
        if isinstance(exc, MemoryError):
            raise
        if isinstance(exc, BabysitError):
            trial.set_user_attr("fail_reason", str(exc))
            raise
        reason = failure_reason(exc)
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason) from exc


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


def _objective(stage: Stage, base: Experiment, data: DataCache, out: Path, stream: Any, quiet: bool,
               score_metric: str) -> Any:
    def objective(trial: optuna.Trial) -> float:
        if _count_toward_total(stage.study, below=trial.number) >= stage.trials:
            trial.set_user_attr(_SURPLUS, True)
            raise SurplusTrial(f"the study already had {stage.trials} trials")
        started = time.perf_counter()
        params = {key: suggest(trial, key, distribution) for key, distribution in stage.space.items()}
        folder = stage.folder / str(trial.number)
        trial.set_user_attr("run_dir", os.path.relpath(folder, out))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process trained it
        with _failing_trial(trial):
            spec = trial_spec(base, params, f"{base.run_name}-{stage.name}-{trial.number}")
            folds = data.splits(spec)
        reached: dict[str, list[float]] = {"val_loss": [], "val_acc": []}
        epochs = 0
        for k, splits in enumerate(folds):
            reporter = TrialReporter(trial, splits.val, step_offset=k * (spec.train.epochs + 1))
            run_dir = folder if len(folds) == 1 else folder / f"fold-{k}"
            with _failing_trial(trial):  # e.g. drawn values the network builder refuses: this trial fails
                result = run(spec, run_dir, quiet=True, extra_callbacks=[reporter], splits=splits, report=False)
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


def run_stage(stage: Stage, base: Experiment, data: DataCache, out: Path, stream: Any = None,
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
        stage.study.optimize(objective, n_trials=1, catch=(BabysitError, TrialFailed, SurplusTrial))
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
        raise BabysitError(NO_SEARCH_SECTION)
    if trials < 1:
        raise BabysitError(f"--trials: must be >= 1; got {trials}")
    if folds is not None and folds < 2:
        raise BabysitError(f"--folds: K-fold cross-validation needs K >= 2; got {folds}")
    if sampler not in SAMPLERS:
        raise BabysitError(f"--sampler: must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    refusal = family_of(spec).single_network_refusal  # trials are scored by one network's validation loss
    if refusal is not None:
        raise BabysitError(f"search: {refusal}")
    if out is None:  # runs/<name>-search (runs/<name> for a spec already named *-search)
        out = Path("runs") / (spec.run_name if spec.run_name.endswith("-search") else f"{spec.run_name}-search")
    out = Path(out)
    name = study or spec.run_name
    space = parse_space(spec.search)
    for folder in (out, *out.parents):  # a file in the way of --out: one line, nothing written
        if folder.exists():
            if not folder.is_dir():
                raise BabysitError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
            break
    store, storage_name = open_storage(storage, out)  # a storage that cannot be opened leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    data = DataCache(folds)
    splits = data.splits(trial_spec(spec, {}, spec.run_name))  # data problems show now, in one line
    metric = score_metric_of(spec, splits[0].task)
    epochs = spec.train.epochs
    budget = f"up to {epochs} epoch{'s' * (epochs != 1)} " + (f"per fold, {folds} folds" if folds else "each")

    refined = None
    with _optuna_quiet():
        chosen, n = make_sampler(sampler, space, trials, spec.seed)
        if n < trials:
            _say(stream, quiet, f"note: the grid has {n} points; the study stops there")
        coarse = Stage("coarse", open_study(store, name, chosen, make_pruner(spec.train.epochs), metric), space, n,
                       out / "trials", metric)
        check_same_space(coarse.study, spec.search, name)
        _say(stream, quiet, f"search: study {name!r} in {storage_name}, {n} trials of {budget}, "
             f"{sampler} sampler, scored by {metric} ({'higher' if metric == 'val_acc' else 'lower'} is better)")
        run_stage(coarse, spec, data, out, stream, quiet)
        stages = [coarse]
        if refine:
            refine_study = open_study(store, f"{name}-refine", make_sampler(sampler, space, trials, spec.seed + 1)[0],
                                      make_pruner(spec.train.epochs), metric)
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


def _shared_refine_space(refine_study: optuna.Study, space: dict[str, SearchDistribution],
                         coarse: optuna.Study) -> dict[str, SearchDistribution] | None:
    """The refine space, the same for every process: the first process to get here stores it
    in the refine study, the others read it from there."""
    saved = refine_study.user_attrs.get("space")
    if saved is not None:
        return space_from_json(saved)
    finished = coarse.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(finished) < 2:
        return None
    refined = refine_space(space, finished, maximize=coarse.direction.name == "MAXIMIZE")
    refine_study.set_user_attr("space", space_to_json(refined))
    return space_from_json(refine_study.user_attrs.get("space", space_to_json(refined)))


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
                   **decode_params(t.params, stage.space),
                   "score": t.user_attrs.get(metric), "val_loss": t.user_attrs.get("val_loss"),
                   "val_acc": t.user_attrs.get("val_acc"), "epochs": t.user_attrs.get("epochs"),
                   "pruned_reason": t.user_attrs.get("pruned_reason"), "run_dir": t.user_attrs.get("run_dir")}
            if t.state == TrialState.FAIL:
                row["pruned_reason"] = t.user_attrs.get("fail_reason", "failed")
            rows.append(row)
    complete = [r for r in rows if r["state"] == "complete" and _finite(r["score"])]
    best = min(complete, key=lambda r: _rank(r, metric)) if complete else None
    best_params = {key: best[key] for key in space} if best else {}
    return SearchResult(study=name, storage=storage_name, out=out, space=space, rows=rows, metric=metric,
                        best_params=best_params, best_value=best["score"] if best else None, best_trial=best,
                        best_spec=best_spec(spec, best_params) if best else None, refine_space=refined)


def _rank(row: dict[str, Any], metric: str) -> tuple[float, float]:
    """How trials are ordered, best first: by the score; among equal validation accuracies
    (a small validation set has few values to give), by the lower validation loss. Equal
    ranks keep the trials' order: the first of them is picked."""
    if metric == "val_acc":
        return -row["score"], row["val_loss"] if _finite(row.get("val_loss")) else math.inf
    return row["score"], 0.0


def _score_text(metric: str, value: float) -> str:
    """A score as the table and the lines show it (two decimals of a percent, or four of a loss)."""
    return f"{value:.2%}" if metric == "val_acc" else f"{value:.4f}"


def tie_line(result: SearchResult) -> str | None:
    """When several finished trials show the best score (equal as printed), a line naming
    them and saying how the best was picked among them; None when the best stands alone.

    Example
    -------
    >>> rows = [{"stage": "coarse", "trial": t, "state": "complete", "score": 0.9, "val_acc": 0.9, "val_loss": l,
    ...          "epochs": 5} for t, l in ((0, 0.31), (1, 0.25), (2, 0.4))]
    >>> result = SearchResult("s", "journal", Path("."), {}, rows, "val_acc", {}, 0.9, rows[1], None)
    >>> print(tie_line(result))
    3 trials tie at val_acc 90.00% (trials 0, 1, 2); picked trial 1, the one with the lowest val_loss (0.2500); a larger validation split (data.val_fraction) or --folds K would tell them apart
    """
    best = result.best_trial
    if best is None:
        return None
    shown = _score_text(result.metric, best["score"])
    tied = [r for r in result.rows
            if r["state"] == "complete" and _finite(r["score"]) and _score_text(result.metric, r["score"]) == shown]
    if len(tied) < 2:
        return None
    stages = len({r["stage"] for r in tied}) > 1

    def name(row: dict[str, Any]) -> str:
        return f"{row['stage']} {row['trial']}" if stages else str(row["trial"])

    ranks = [_rank(r, result.metric) for r in tied]
    mine = _rank(best, result.metric)
    if ranks.count(mine) > 1:
        why = "the first of them"
    elif sum(rank[0] == mine[0] for rank in ranks) > 1:
        why = f"the one with the lowest val_loss ({best['val_loss']:.4f})"
    else:
        unrounded = best["score"] * 100 if result.metric == "val_acc" else best["score"]
        why = f"the best before rounding ({result.metric} {unrounded:.6g}{'%' if result.metric == 'val_acc' else ''})"
    return (f"{len(tied)} trials tie at {result.metric} {shown} (trials {', '.join(name(r) for r in tied)}); "
            f"picked trial {name(best)}, {why}; a larger validation split (data.val_fraction) or --folds K would "
            "tell them apart")


# --------------------------------------------------------------------------- output


def write_search(result: SearchResult, spec: Experiment) -> dict[str, Path]:
    """Write ``best.yaml`` (when a trial finished), ``trials.csv``, ``trials.json`` and ``search.png``."""
    out = result.out
    files: dict[str, Path] = {}
    if result.best_spec is not None and result.best_trial is not None:
        b = result.best_trial
        header = (f"# found by babysit search: study {result.study}, {b['stage']} trial {b['trial']}, "
                  f"{_metrics_text(_reached(b))}\n# train it: babysit train {out / 'best.yaml'}\n")
        write_text(out / "best.yaml", header + yaml.safe_dump(result.best_spec.to_dict(), sort_keys=False))
        files["best"] = out / "best.yaml"
    columns = ["stage", "trial", "state", *result.space, "score", "val_loss", "val_acc", "epochs", "pruned_reason",
               "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    write_text(out / "trials.csv", buffer.getvalue())
    files["csv"] = out / "trials.csv"
    summary = {
        "study": result.study, "storage": result.storage, "space": spec.search, "score": result.metric,
        "refine_space": {k: describe(d) for k, d in result.refine_space.items()} if result.refine_space else None,
        "best": result.best_trial, "trials": result.rows,
    }
    write_json(out / "trials.json", summary)  # NaN and inf as null
    files["json"] = out / "trials.json"
    figure = search_figure(result)
    if figure is not None:
        write_bytes(out / "search.png", png_bytes(figure, dpi=100))
        files["figure"] = out / "search.png"
    return files


def _reached(row: dict[str, Any]) -> dict[str, float]:
    return {m: row[m] for m in ("val_loss", "val_acc") if _finite(row.get(m))}


def search_figure(result: SearchResult) -> Any:
    """The score (best validation loss, or accuracy) against each searched key, one panel per
    key (log x axis for log ranges): finished trials as dots (the best as a star), pruned ones
    as grey crosses at the best they reached, clipped to the edge of the panel when off it."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    def log_ticks(ax: Any, low: float, high: float) -> None:
        """A few labelled ticks on a log x axis: matplotlib labels the minor ticks (2e-3, 3e-3, ...)
        when a panel spans a decade or two, and they run into each other. Over two or more powers
        of ten: at most 5 of them; else 3 ticks spread evenly across the range, 2 significant digits."""
        ax.set_xlim(low / 1.2, high * 1.2)
        ax.xaxis.set_minor_formatter(NullFormatter())
        if math.floor(math.log10(high) + 1e-9) - math.ceil(math.log10(low) - 1e-9) >= 1:  # two powers of ten inside
            ax.xaxis.set_major_locator(LogLocator(base=10, numticks=5))
        else:
            ax.xaxis.set_major_locator(FixedLocator([float(f"{t:.2g}") for t in
                                                     (low, math.sqrt(low * high), high)]))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))

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
        labels = [encode_choice(c) for c in d.choices] if d.is_choice else None

        def x_of(row: dict[str, Any], labels: list[Any] | None = labels, key: str = key) -> float:
            value = row.get(key)
            return float(labels.index(encode_choice(value))) if labels is not None else float(value)

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
            xs = [x_of(r) for r in result.rows if _finite(r.get(key)) and r[key] > 0]
            log_ticks(ax, min([d.low, *xs]), max([d.high, *xs]))
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
    rows = sorted(result.rows, key=lambda r: (order.get(r["state"], 4),
                                              _rank(r, result.metric) if _finite(r["score"]) else (math.inf, math.inf)))
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
    tie = tie_line(result)
    if tie is not None:
        lines.append(tie)
    if "best" in result.files:
        lines.append(f"best spec: {result.files['best']} (train it: babysit train {result.files['best']})")
    written = [result.files[k].name for k in ("csv", "json", "figure") if k in result.files]
    lines.append(f"wrote {', '.join(written)} in {result.out}")
    return lines


__all__ = [
    # this module: the search, its trials and its outputs
    "FAIL_REASON_CHARS", "FAILURES_IN_A_ROW", "NO_SEARCH_SECTION", "SEARCH_EXAMPLE", "SearchResult", "Stage",
    "SurplusTrial", "TrialFailed", "best_spec",
    "failure_reason", "run_stage", "score_metric_of", "search", "search_figure", "search_lines", "search_table",
    "stop_behind", "tie_line", "trial_spec", "write_search",
    # babysit.tune.space
    "REFINE_LINEAR_MARGIN", "REFINE_LOG_MARGIN", "REFINE_TOP_FRACTION", "SAMPLERS", "TrialSeededRandomSampler",
    "decode_params", "describe", "encode_choice", "grid_space", "grid_values", "make_sampler",
    "optuna_distribution", "parse_space", "refine_space", "space_from_json", "space_to_json", "suggest",
    # babysit.tune.storage
    "STORAGE_ATTEMPTS", "check_same_space", "hide_password", "journal_storage", "open_storage", "open_study",
    # babysit.tune.folds
    "DataCache", "cross_validation_folds",
    # babysit.tune.pruning
    "DIVERGENCE_FACTOR", "MEDIAN_STARTUP_TRIALS", "MEDIAN_WARMUP_FRACTION", "DivergencePruner", "TrialReporter",
    "divergence_reason", "make_pruner",
]
