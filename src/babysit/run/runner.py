"""From a validated spec to a finished run directory: one path for every model family.

``run(spec)`` is what ``babysit train`` does: seed, load the data, build the network, loss,
optimizer and schedule, train with the standard callbacks, evaluate, diagnose and write
``runs/<name>/`` (config.yaml, metrics.jsonl, monitors.jsonl, findings.json, summary.json,
checkpoints/, tb/, report.html). Whatever a kind of model does differently, its family says
(:mod:`babysit.families`); whether the run is alone or one rank of a torchrun group, its
cluster says (:class:`~babysit.train.distributed.SingleProcess` or
:class:`~babysit.train.distributed.DistributedContext`, the same interface).

Example
-------
>>> import tempfile
>>> from babysit.config import Experiment
>>> spec = Experiment(data={"source": "spirals"}, train={"epochs": 2})
>>> result = run(spec, out=tempfile.mkdtemp() + "/run", quiet=True)
>>> result.summary["epochs"], (result.path / "summary.json").exists()
(2, True)
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from babysit import config as config_module
from babysit import data as data_module
from babysit.checks.findings import (
    PREFLIGHT_IDS,
    Finding,
    finding_lines,
    findings_markdown,
    reconcile,
    sort_findings,
    write_findings,
)
from babysit.checks.spikes import nonfinite_finding, nonfinite_origin
from babysit.config import Experiment
from babysit.data.augment import augmenter
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.families import Family, RunContext, family_of
from babysit.optim import losses, regularization
from babysit.report import render
from babysit.run.prepare import make_penalty, prepare
from babysit.rundir import (
    check_new_run_folder,
    clear_run,
    read_json_list,
    remove_orphans,
    run_lock,
    truncate_jsonl,
    write_json,
    write_text,
)
from babysit.train.callbacks import (
    Checkpointer,
    EarlyStopping,
    MetricsLogger,
    MonitorCallback,
    ProgressReporter,
    TensorBoardLogger,
    TrajectorySaver,
)
from babysit.train.checkpoint import load_checkpoint, load_weights, set_rng_state
from babysit.train.device import cpu_threads, environment, run_threads
from babysit.train.distributed import DistributedContext, SingleProcess, in_process_group
from babysit.train.ensemble import cycle_end_steps, evaluate_snapshots, snapshot_callback
from babysit.train.loop import Callback, LoopState, Trainer


@dataclass
class RunResult:
    path: Path
    summary: dict[str, Any]
    model: nn.Module
    splits: data_module.Splits
    findings: list[Any] = field(default_factory=list)
    rank: int = 0  # under torchrun, this process's rank: only rank 0 wrote the run directory
    spec: Experiment | None = None  # what ran


@dataclass
class Assembled:
    """Everything a run builds before it writes anything (see :func:`assemble`)."""

    family: Family
    device: torch.device
    splits: data_module.Splits
    model: nn.Module
    loss_fn: Any
    generator: torch.Generator  # the batches' shuffling
    batches: Batches | data_module.StreamBatches
    optimizer: Any
    schedule: Any
    step: Any  # the family's own training step, or None
    augment: Any = None  # data.augment on the training batches (babysit.data.augment), or None


def assemble(spec: Experiment, splits: data_module.Splits | None = None, cluster: Any = None) -> Assembled:
    """The family's refusals, then the device, data, network, loss, batches, optimizer,
    schedule and training step of a run: what ``babysit train`` builds before it writes
    anything, and what ``babysit check`` builds to refuse exactly what train refuses."""
    group = cluster or SingleProcess()
    family = family_of(spec)
    device, splits, model, loss_fn = prepare(spec, splits, two_networks=True)
    generator = torch.Generator().manual_seed(spec.seed)
    # in memory: this rank's part of each batch; streamed from disk: read by a DataLoader
    batches = data_module.batches(splits.train, spec.data.batch_size, generator,
                                  **group.batch_shard(spec.data.batch_size))
    optimizer, schedule = family.optimizer(spec, model, len(batches))
    step = family.train_step(spec, model, optimizer)
    group.check_trainable(optimizer, step)
    _check_on_spike(spec, family, optimizer, step, group)
    if spec.train.snapshots is not None:  # refused now, not at the first cycle's end
        cycle_end_steps(spec.schedule, len(batches), spec.train.epochs)
    augment = augmenter(spec.data.augment, splits.input_shape, spec.seed)  # refused here when it does not fit
    return Assembled(family, device, splits, model, loss_fn, generator, batches, optimizer, schedule, step, augment)


def _check_on_spike(spec: Experiment, family: Family, optimizer: Any, step: Any, group: Any) -> None:
    """train.on_spike skip / rollback where the loop can undo a step: the standard update
    (loss, backward, step) of a minimised loss, in one process; skip also needs one optimizer
    step a batch. Refused in one line otherwise."""
    how = spec.train.on_spike
    if how == "stop":
        return
    why = None
    if step is not None or not math.isfinite(family.explosion_factor(spec)):
        why = (f"model.kind {spec.model.kind}'s loss is not one being minimised (its explosion guard watches "
               "for NaN only), so a jump in it is no spike")
    elif getattr(group, "world_size", 1) > 1:
        why = "under torchrun each rank would decide on its own shard's loss (the ranks must agree)"
    elif how == "skip" and (isinstance(optimizer, torch.optim.LBFGS) or getattr(optimizer, "needs_closure", False)):
        why = f"optimizer {spec.optimizer.name} takes its step in one call, with no point to skip it from; use rollback"
    if why is not None:
        raise BabysitError(f"train.on_spike: {how} is not available here: {why}")


def _spike_detection(spec: Experiment, family: Family) -> float | None:
    """checks.spike_factor, or None (no spike detection) for a family whose explosion guard
    watches for NaN only (the GAN's adversarial losses, the perceptron's mistakes)."""
    return spec.checks.spike_factor if math.isfinite(family.explosion_factor(spec)) else None


def check_resume_spec(saved: Experiment, given: Experiment) -> None:
    """A resumed run must be the same experiment; only the number of epochs may grow."""
    if given.train.epochs < saved.train.epochs:
        raise BabysitError(f"--resume: train.epochs may only grow ({saved.train.epochs} in the run's config.yaml, "
                           f"{given.train.epochs} now)")
    a, b = saved.to_dict(), given.to_dict()
    a["train"].pop("epochs"), b["train"].pop("epochs")
    for section in a:
        if a[section] != b.get(section):
            if isinstance(a[section], dict):
                for key in a[section]:
                    if a[section][key] != b[section].get(key):
                        raise BabysitError(f"--resume: {section}.{key} differs from the run's config.yaml "
                                           f"({a[section][key]!r} there, {b[section][key]!r} now); only train.epochs may change")
            raise BabysitError(f"--resume: {section} differs from the run's config.yaml; only train.epochs may change")


def _restoring_determinism(train: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """train.deterministic is process-wide in torch: set it for one run only."""

    @functools.wraps(train)
    def wrapper(spec: Experiment, *args: Any, **kwargs: Any) -> RunResult:
        before = torch.are_deterministic_algorithms_enabled()
        if spec.train.deterministic:
            torch.use_deterministic_algorithms(True)
        try:
            return train(spec, *args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(before)

    return wrapper


@_restoring_determinism
@in_process_group
def run(
    spec: Experiment,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
    extra_callbacks: list[Callback] | None = None,
    progress_stream: Any = None,
    cluster: DistributedContext | None = None,
    splits: data_module.Splits | None = None,
    report: bool = True,
) -> RunResult:
    """Train the experiment and write its run directory; returns the path, summary, model and data.
    ``report=False`` leaves out report.html (search trials: ``babysit report RUN`` draws it later).

    Under torchrun the run is data-parallel (``cluster``, filled in by :func:`in_process_group`;
    see :mod:`babysit.train.distributed`): rank 0 writes the run directory, and every rank
    returns rank 0's summary.

    Rank 0 holds the run directory's lock (:func:`babysit.rundir.run_lock`) while it writes:
    a second process on the same directory is refused in one line. A run asked to resume that
    stopped before its first checkpoint starts again from the beginning, and says so."""
    group = cluster or SingleProcess()
    path, resumable = group.agree_run_directory(spec.run_name, out, resume)  # rank 0 decides
    if resume and group.is_main:  # the same experiment, only train.epochs may grow
        check_resume_spec(config_module.load(path / "config.yaml"), spec)
    built = assemble(spec, splits, group)  # refused here, nothing is written; given splits: a cross-validation fold
    parameters = sum(p.numel() for p in built.model.parameters())
    with cpu_threads(run_threads(spec.train.threads, parameters, built.device)):
        return _run_locked(path, resumable, resume, spec, built, group, quiet, extra_callbacks, progress_stream,
                           report)


def _run_locked(path: Path, resumable: bool, resume: bool, spec: Experiment, built: Assembled, group: Any,
                quiet: bool, extra_callbacks: list[Callback] | None, progress_stream: Any, report: bool) -> RunResult:
    """:func:`run` in its decided directory: rank 0 under the directory's lock."""
    if not group.is_main:
        return _run_in(path, resumable, spec, built, group, quiet, extra_callbacks, progress_stream, report)
    with run_lock(path):
        if resume and not resumable:
            clear_run(path)
            if not quiet:
                print(f"{path}: no checkpoint yet (the run was stopped before its first one): "
                      "starting it again from the beginning", file=progress_stream or sys.stdout)
        elif not resume and not resumable and not getattr(group, "restart_count", 0):
            # again, under the lock: another process may have written a run there meanwhile
            # (a torchrun group restarted after a failure continues in its first attempt's directory)
            check_new_run_folder(path)
        remove_orphans(path)  # temporary files of writes a kill cut short
        return _run_in(path, resumable, spec, built, group, quiet, extra_callbacks, progress_stream, report)


def _run_in(path: Path, resume: bool, spec: Experiment, built: Assembled, group: Any, quiet: bool,
            extra_callbacks: list[Callback] | None, progress_stream: Any, report: bool) -> RunResult:
    """:func:`run` in its decided run directory ``path`` (continued from its checkpoint when
    ``resume``), with what :func:`assemble` built."""
    family = built.family
    main = group.is_main
    device, splits, model, loss_fn = built.device, built.splits, built.model, built.loss_fn
    generator, batches, optimizer, schedule, step = (built.generator, built.batches, built.optimizer, built.schedule,
                                                     built.step)
    penalty, activity = make_penalty(spec, model)
    max_norm = spec.regularization.max_norm
    context = RunContext(spec=spec, path=path, splits=splits, model=model, loss_fn=loss_fn,
                         steps_per_epoch=len(batches), resume=resume)

    early = (EarlyStopping(spec.train.early_stopping.monitor, spec.train.early_stopping.patience,
                           spec.train.early_stopping.min_delta) if family.early_stopping else None)
    state, checkpoint = LoopState(), None
    if resume:  # first: a checkpoint that does not fit is refused before anything is written
        # from rank 0: the other machines need no shared file system
        checkpoint = group.broadcast_checkpoint(_last_checkpoint(path) if main else None)
        state = _restore(checkpoint, built, early if main else None, path)
    if main:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_text(path / "config.yaml", config_module.to_yaml(spec))  # atomic: a kill leaves the old or the new
        if resume:
            truncate_jsonl(path / "metrics.jsonl", state.step)
    preflight_found: list[Finding] | None = None  # None: kept from the first segment of a resumed run
    if not resume:
        preflight_found = _preflight(family, context, None if quiet else progress_stream or sys.stdout) if main else []

    callbacks, monitors = _callbacks(spec, family, context, early, generator, state.step,
                                     extra_callbacks or [], None if quiet else progress_stream or sys.stdout, main)
    trainer = Trainer(
        model, loss_fn, optimizer, schedule=schedule, callbacks=callbacks,
        predict=(lambda out, _name=spec.loss: losses.predict(out, _name)) if splits.task == "classification" else None,
        penalty=penalty, after_step=(lambda m: regularization.apply_max_norm(m, max_norm)) if max_norm else None,
        input_noise=spec.regularization.input_noise, grad_clip=spec.optimizer.grad_clip,
        precision=spec.train.precision, compile=spec.train.compile, step=step,
        on_spike=spec.train.on_spike, spike_factor=_spike_detection(spec, family), spike_every=spec.checks.every,
        augment=built.augment, input_wait_every=spec.checks.every,
    )
    if checkpoint is not None and trainer.scaler is not None and "scaler" in checkpoint:
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    # under torchrun: DDP forward, epoch metrics averaged over ranks, stops agreed, callbacks on rank 0
    group.attach(trainer, seed=spec.seed, compile=spec.train.compile,
                 stop_every=spec.checks.every if spec.checks.monitors else None)
    started = time.perf_counter()
    state = trainer.fit(batches, spec.train.epochs, splits.val, state=state)
    if activity is not None:
        activity.remove()
    if not main:  # rank 0 measures, writes the summary, findings and report, and shares the summary
        return RunResult(path=path, summary=group.broadcast(None), model=model, splits=splits, rank=group.rank,
                         spec=spec)

    summary = summarise(spec, family, context, trainer, state, early, device, started)
    guard = _explain_nonfinite(monitors.guard if monitors is not None else None, trainer, context)
    findings = _run_findings(family, context, preflight_found, guard, state.step)
    summary["findings"] = {sev: sum(f.severity == sev for f in findings) for sev in ("error", "warning", "info")}
    write_json(path / "summary.json", summary)
    family.artifacts(context)  # reconstructions, vocabulary, generated text
    if report:
        write_report(path)
    group.broadcast(summary)
    return RunResult(path=path, summary=summary, model=model, splits=splits, findings=findings, spec=spec)


def _explain_nonfinite(guard: Finding | None, trainer: Trainer, context: RunContext) -> Finding | None:
    """The explosion guard's ``nonfinite_loss`` with where the NaN came from: the batch of the
    first non-finite loss replayed with a hook on every module
    (:func:`~babysit.checks.spikes.nonfinite_origin`) at the last checkpoint's weights (the
    weights the bad step started from are gone under ``train.on_spike: stop``: the step wrote
    NaN into them; skip and rollback replay at those exactly)."""
    last = context.path / "checkpoints" / "last.pt"
    if guard is None or guard.id != "nonfinite_loss" or trainer.nonfinite_batch is None or not last.exists():
        return guard
    record, indices = trainer.nonfinite_batch
    try:
        checkpoint = load_checkpoint(last, map_location="cpu")
        model = copy.deepcopy(context.model)
        load_weights(model, checkpoint, last)
    except BabysitError:
        return guard
    train = context.splits.train
    model.train()
    with trainer.autocast():
        origin = nonfinite_origin(model, context.loss_fn, (train.x[indices.to(train.x.device)],
                                                          train.y[indices.to(train.y.device)]))
    return nonfinite_finding(guard, origin, record,
                             weights=f"the last checkpoint's weights (step {checkpoint['loop']['step']})")


def _preflight(family: Family, context: RunContext, stream: Any) -> list[Finding]:
    """The family's preflight checks (when ``checks.preflight``), written to findings.json and
    printed one a line to ``stream`` (None: quiet)."""
    spec = context.spec
    if not spec.checks.preflight:
        return []
    found = family.preflight(spec, context.model, context.loss_fn, context.splits, run_dir=context.path)
    write_findings(context.path / "findings.json", found)
    for line in finding_lines(found) if stream is not None else []:
        print(f"preflight {line}", file=stream)
    return found


def _last_checkpoint(path: Path) -> dict[str, Any]:
    # on the CPU: RNG and generator states must be CPU tensors; load_state_dict moves the rest
    return load_checkpoint(path / "checkpoints" / "last.pt", map_location="cpu")


def _restore(checkpoint: dict[str, Any], built: Assembled, early: EarlyStopping | None, path: Path) -> LoopState:
    """Put the weights, optimizer, schedule, RNGs and early stopping (with its best weights)
    back as the checkpoint saved them; returns the loop state to continue from. A checkpoint
    of another network, or one missing a part, is a BabysitError naming the file."""
    last, best_path = path / "checkpoints" / "last.pt", path / "checkpoints" / "best.pt"
    load_weights(built.model, checkpoint, last)
    try:
        built.optimizer.load_state_dict(checkpoint["optimizer"])
        if built.schedule is not None and checkpoint.get("schedule") is not None:
            built.schedule.load_state_dict(checkpoint["schedule"])
        built.generator.set_state(checkpoint["generator"])
        set_rng_state(checkpoint["rng"])
        loop = LoopState.from_checkpoint(checkpoint["loop"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        detail = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:120]
        raise BabysitError(f"{last}: not a checkpoint of this run ({detail}); move it away to start again") from None
    if early is not None and checkpoint.get("early_stopping") is not None:
        best = None
        if best_path.exists():
            weights = copy.deepcopy(built.model)
            load_weights(weights, load_checkpoint(best_path), best_path)
            best = {k: v.to(built.device) for k, v in weights.state_dict().items()}
        early.load_state_dict(checkpoint["early_stopping"], best)
    return loop


def _callbacks(spec: Experiment, family: Family, context: RunContext, early: EarlyStopping | None,
               generator: torch.Generator, step: int, extra: list[Callback], progress_stream: Any, main: bool
               ) -> tuple[list[Callback], MonitorCallback | None]:
    """The run's callbacks, in the order they run: the family's first (they may add to an
    epoch's logs), the standard ones, the caller's ``extra``, the progress bar last (when
    ``progress_stream`` is given); and the monitor callback. ``step``: where a resumed run starts;
    ``main``: this process writes the run directory (rank 0)."""
    path, resume = context.path, context.resume
    metrics = MetricsLogger(path / "metrics.jsonl", spec.train.log_every)
    monitors: MonitorCallback | None = None
    if spec.checks.monitors:
        if resume and main:
            truncate_jsonl(path / "monitors.jsonl", step)
        monitors = MonitorCallback(path / "monitors.jsonl", every=spec.checks.every,
                                   explosion_factor=family.explosion_factor(spec),
                                   initial_loss=first_loss(path / "monitors.jsonl") if resume else None)
    snapshots = snapshot_callback(spec, path / "checkpoints", context.steps_per_epoch)  # train.snapshots
    callbacks: list[Callback] = [
        *family.callbacks(context),
        metrics,
        TensorBoardLogger(path / "tb", monitors=monitors),
        *([monitors] if monitors is not None else []),  # before the checkpointer: a diverged run saves nothing
        *([early] if early is not None else []),
        Checkpointer(path / "checkpoints", generator=generator, epochs=spec.train.epochs,
                     every_s=spec.train.checkpoint_every_s, early_stopping=early,
                     before_save=[metrics.flush] + ([monitors.flush] if monitors is not None else [])),
        *([TrajectorySaver(path / "checkpoints" / "trajectory", spec.train.trajectory_every)] if spec.train.trajectory_every else []),
        *([snapshots] if snapshots is not None else []),
        *extra,
    ]
    if progress_stream is not None:
        callbacks.append(ProgressReporter(spec.train.epochs, context.steps_per_epoch, stream=progress_stream))
    return callbacks, monitors


def summarise(spec: Experiment, family: Family, context: RunContext, trainer: Trainer, state: LoopState,
              early: EarlyStopping | None, device: torch.device, started: float) -> dict[str, Any]:
    """summary.json without its findings: the family's figures, how the run went, the environment."""
    summary: dict[str, Any] = {"name": spec.run_name, **family.metrics(context, trainer)}
    summary.update({
        "epochs": state.epoch,
        "steps": state.step,
        **({"best_epoch": early.best_epoch} if early is not None else {}),
        "stopped_early": bool(state.stop),
        "stop_reason": state.stop_reason,
        "diverged": state.diverged,
        "wall_time_s": round(state.elapsed, 3),
        "session_time_s": round(time.perf_counter() - started, 3),
        "parameters": sum(p.numel() for p in context.model.parameters()),
        "data": _data_summary(context.splits),
        **environment(device),
    })
    summary.update(family.summary_extra(context, summary))
    if spec.train.snapshots is not None:  # Huang et al. 2017: the snapshot ensemble against its last snapshot
        summary["snapshot_ensemble"] = evaluate_snapshots(context.path / "checkpoints" / "snapshots", context.model,
                                                          spec.loss, context.splits, keep=spec.train.snapshots)
    write_json(context.path / "summary.json", summary)  # the diagnosis reads it
    return summary


def _data_summary(splits: Any) -> dict[str, Any]:
    """What the report's data section shows: split sizes, input shape, classes and task."""
    return {"train": len(splits.train), "val": len(splits.val) if splits.val is not None else 0,
            "test": len(splits.test) if splits.test is not None else 0,
            "input_shape": list(splits.input_shape), "classes": splits.num_classes, "task": splits.task,
            **({"streamed": True} if splits.streaming else {})}  # read from disk per batch (data.in_memory_limit)


def _run_findings(family: Family, context: RunContext, preflight_found: list[Finding] | None,
                  guard: Finding | None, step: int) -> list[Finding]:
    """Preflight (kept from the first segment of a resumed run), the explosion guard and the
    family's after-run findings, most severe first, written to findings.json and TensorBoard.
    Reads what the run wrote, so a resumed run is judged on all of it."""
    path = context.path
    if preflight_found is None:  # resumed: the preflight ran in the first segment
        preflight_found = [Finding(**f) for f in read_json_list(path / "findings.json") if f.get("id") in PREFLIGHT_IDS]
    found = sort_findings(reconcile([*preflight_found, *([guard] if guard is not None else []),
                                     *family.findings(context)]))
    write_findings(path / "findings.json", found)
    with SummaryWriter(log_dir=str(path / "tb")) as writer:  # the findings in TensorBoard's Text tab
        writer.add_text("findings", findings_markdown(found), global_step=step)
    return found


def write_report(path: Path) -> None:
    """report.html, the page to look at (``babysit report RUN`` redraws it). The run is complete
    without it: a failure to draw is reported in one line, not raised."""
    try:
        render(path)
    except Exception as exc:  # noqa: BLE001 (a figure bug must not cost the user the run's end)
        print(f"report: not written ({type(exc).__name__}: {exc}); the run directory is complete, "
              f"retry with: babysit report {path}", file=sys.stderr)


def first_loss(path: Path) -> float | None:
    """The loss of a run's first monitor sample: the explosion guard's reference on resume
    (only the first line is read; monitors.jsonl grows with the run)."""
    try:
        with path.open(encoding="utf-8") as handle:
            record = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    loss = record.get("loss") if isinstance(record, dict) else None
    return loss if isinstance(loss, (int, float)) else None


__all__ = ["Assembled", "RunResult", "assemble", "check_resume_spec", "first_loss", "run", "summarise", "write_report"]
