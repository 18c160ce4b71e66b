"""From a validated spec to a finished run directory.

``run(spec)`` is what ``babysit train`` does: seed, load the data, build the network, loss,
optimizer and schedule, train with the standard callbacks, evaluate every split and write
``runs/<name>/`` (config.yaml, metrics.jsonl, summary.json, checkpoints/, tb/). Each piece
it calls is usable on its own; this file only wires them.

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

import functools
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from babysit import config as config_module
from babysit import data as data_module
from babysit import nets
from babysit.config import Experiment
from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.optim import losses, optimizers, regularization, schedules
from babysit.optim.perceptron import PerceptronCriterion, SeparationStop, separation_finding
from babysit.train import families
from babysit.train.callbacks import (
    Checkpointer,
    EarlyStopping,
    MetricsLogger,
    MonitorCallback,
    ProgressReporter,
    TensorBoardLogger,
    TrajectorySaver,
    truncate_metrics,
)
from babysit.train.checkpoint import load_checkpoint, set_rng_state
from babysit.train.distributed import DistributedContext, in_process_group
from babysit.train.ensemble import evaluate_snapshots, snapshot_callback, snapshot_line
from babysit.train.loop import Callback, LoopState, Trainer, evaluate


@dataclass
class RunResult:
    path: Path
    summary: dict[str, Any]
    model: nn.Module
    splits: data_module.Splits
    findings: list[Any] = field(default_factory=list)
    rank: int = 0  # under torchrun, this process's rank: only rank 0 wrote the run directory


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an unavailable device is a BabysitError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BabysitError("train.device: 'cuda' is not available on this machine; use auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise BabysitError("train.device: 'mps' is not available on this machine; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_directory(spec: Experiment, out: str | Path | None, resume: bool) -> Path:
    """``out`` is the run directory itself; by default ``runs/<name>``, with ``-2``, ``-3``...
    appended when that exists (a new run never overwrites an old one). With ``resume`` and no
    ``out``, the newest ``runs/<name>*`` is continued."""
    if out is not None:
        path = Path(out)
        if resume:
            if not (path / "checkpoints" / "last.pt").exists():
                raise BabysitError(f"{path}: no checkpoint to resume from (expected {path / 'checkpoints' / 'last.pt'})")
        elif (path / "config.yaml").exists():
            raise BabysitError(f"{path}: a run is already there; pass --resume to continue it or choose another --out")
        return path
    root, name = Path("runs"), spec.run_name
    if resume:
        candidates = [p for p in root.glob(f"{name}*") if (p / "checkpoints" / "last.pt").exists()
                      and (p.name == name or p.name.removeprefix(name + "-").isdigit())]
        if not candidates:
            raise BabysitError(f"runs/{name}: no run to resume; train it first or pass --out RUN_DIR")
        return max(candidates, key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime)
    path, n = root / name, 1
    while (path / "config.yaml").exists():
        n += 1
        path = root / f"{name}-{n}"
    return path


def build_model(spec: Experiment, splits: data_module.Splits) -> nn.Module:
    out_dim = losses.output_dim(spec.loss, splits.task, splits.num_classes, splits.target_dim)
    return nets.build(spec.model, splits.input_shape, out_dim)


def prepare(spec: Experiment, splits: data_module.Splits | None = None, *, two_networks: bool = False
            ) -> tuple[torch.device, data_module.Splits, nn.Module, nn.Module]:
    """Seed, then the device, the data on it, the initialised network and the loss of a spec.
    ``splits`` replaces the data ``spec.data`` describes (a cross-validation fold, for instance).
    A GAN (two networks with their own losses) is refused unless ``two_networks``: the commands
    that take one network and one loss (lr-find, batch-find, landscape...) cannot use it."""
    if spec.model.kind == "gan" and not two_networks:
        raise BabysitError("model.kind: gan trains two networks against each other; babysit train and "
                           "babysit check take it, this command takes a single network")
    device = resolve_device(spec.train.device)
    seed_everything(spec.seed)
    splits = (splits if splits is not None else data_module.load(spec.data, spec.seed)).to(device)
    splits = families.adapt_splits(spec, splits)  # an autoencoder's targets are its inputs
    model = build_model(spec, splits).to(device)
    is_2d_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if device.type == "cuda" and is_2d_conv:
        # tensor cores want NHWC: convert the weights and the (in-memory) inputs once
        model = model.to(memory_format=torch.channels_last)
        for split in (splits.train, splits.val, splits.test):
            if split is not None and split.x.dim() == 4:
                split.x = split.x.contiguous(memory_format=torch.channels_last)
    loss_fn = losses.build_loss(spec.loss, splits.task, splits.num_classes, per_token=families.per_token(splits))
    return device, splits, model, loss_fn


def preflight_inputs(spec: Experiment, splits: data_module.Splits, examples: int = 512) -> dict[str, Any]:
    """The keyword arguments :func:`babysit.checks.preflight.preflight` needs for a spec."""
    return {
        "data": (splits.train.x[:examples], splits.train.y[:examples]),
        "task": splits.task,
        "num_classes": splits.num_classes,
        "loss_name": spec.loss,
        "seed": spec.seed,
    }


def make_penalty(spec: Experiment, model: nn.Module) -> tuple[Any, regularization.ActivityRegularizer | None]:
    """L1 on weights and the activity penalty as one ``model -> scalar`` function (or None)."""
    l1 = spec.regularization.l1
    activity = None
    if spec.regularization.activity > 0:
        activity = regularization.ActivityRegularizer(nets.activation_modules(model), spec.regularization.activity)
    if not l1 and activity is None:
        return None, None

    def penalty(m: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(m.parameters()).device)
        if l1:
            total = total + l1 * regularization.l1_penalty(m)
        if activity is not None:
            total = total + activity.penalty()
        return total

    return penalty, activity


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def _check_resume_spec(saved: Experiment, given: Experiment) -> None:
    """A resumed run must be the same experiment; only the number of epochs may grow."""
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
    returns rank 0's summary."""
    if spec.model.kind == "gan":  # two networks, two optimizers, alternating steps: train/gan.py
        if cluster is not None:
            raise BabysitError("model.kind: gan trains in one process; run it without torchrun")
        from babysit.train.gan import run_gan

        return run_gan(spec, out, resume=resume, quiet=quiet, extra_callbacks=extra_callbacks,
                       progress_stream=progress_stream)
    main = cluster is None or cluster.is_main
    if cluster is None:
        path = run_directory(spec, out, resume)
    else:  # rank 0 decides (and, after a torchrun restart, resumes the run it was in)
        path, resume = cluster.agree_run_directory(spec, out, resume)
    if resume and main:
        saved = config_module.load(path / "config.yaml")
        _check_resume_spec(saved, spec)
    device, splits, model, loss_fn = prepare(spec, splits)  # splits: given ones (a cross-validation fold) or spec.data
    predict = (lambda out, _name=spec.loss: losses.predict(out, _name)) if splits.task == "classification" else None
    optimizer = optimizers.build_optimizer(spec.optimizer, model)
    generator = torch.Generator().manual_seed(spec.seed)
    shard = cluster.batch_shard(spec.data.batch_size) if cluster is not None else {}  # this rank's part of each batch
    batches = Batches(splits.train.x, splits.train.y, spec.data.batch_size, generator, **shard)
    schedule = schedules.build_schedule(spec.schedule, optimizer, len(batches), spec.train.epochs)
    penalty, activity = make_penalty(spec, model)
    max_norm = spec.regularization.max_norm
    after_step = (lambda m: regularization.apply_max_norm(m, max_norm)) if max_norm else None

    if main:
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
        config_module.save(spec, path / "config.yaml")
    findings: list[Any] = []
    if spec.checks.preflight and not resume and main:
        from babysit.checks.findings import finding_lines, write_findings
        from babysit.checks.preflight import preflight

        findings = preflight(model, loss_fn, **preflight_inputs(spec, splits))
        write_findings(path / "findings.json", findings)
        if not quiet:
            for line in finding_lines(findings):
                print(f"preflight {line}", file=progress_stream or sys.stdout)

    state = LoopState()
    early = EarlyStopping(spec.train.early_stopping.monitor, spec.train.early_stopping.patience,
                          spec.train.early_stopping.min_delta)
    if resume:
        # on the CPU: RNG and generator states must be CPU tensors; load_state_dict moves the rest
        checkpoint = load_checkpoint(path / "checkpoints" / "last.pt", map_location="cpu") if main else None
        if cluster is not None:  # from rank 0: the other machines need no shared file system
            checkpoint = cluster.broadcast_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("schedule") is not None:
            schedule.load_state_dict(checkpoint["schedule"])
        state = LoopState.from_checkpoint(checkpoint["loop"])
        generator.set_state(checkpoint["generator"])
        set_rng_state(checkpoint["rng"])
        if main and checkpoint.get("early_stopping") is not None:
            best_path = path / "checkpoints" / "best.pt"
            best = {k: v.to(device) for k, v in load_checkpoint(best_path)["model"].items()} if best_path.exists() else None
            early.load_state_dict(checkpoint["early_stopping"], best)
        if main:
            truncate_metrics(path / "metrics.jsonl", state.step)

    metrics = MetricsLogger(path / "metrics.jsonl", spec.train.log_every)
    monitors: MonitorCallback | None = None
    if spec.checks.monitors:
        if resume and main:
            truncate_metrics(path / "monitors.jsonl", state.step)
        # the perceptron criterion has no fixed scale (it grows with ||w||), so "3x the initial loss"
        # says nothing about divergence there; the guard still stops a NaN / inf loss
        monitors = MonitorCallback(path / "monitors.jsonl", every=spec.checks.every,
                                   explosion_factor=float("inf") if spec.loss == "perceptron" else spec.checks.explosion_factor,
                                   initial_loss=_first_loss(path / "monitors.jsonl") if resume else None)
    snapshots = snapshot_callback(spec, path / "checkpoints", len(batches))  # train.snapshots: cycle-end weights
    separation = SeparationStop(loss_fn) if isinstance(loss_fn, PerceptronCriterion) else None  # loss: perceptron
    callbacks: list[Callback] = [
        *([separation] if separation is not None else []),  # first: it adds the epoch's mistakes to its logs
        metrics,
        TensorBoardLogger(path / "tb", monitors=monitors),
        *([monitors] if monitors is not None else []),  # before the checkpointer: a diverged run saves nothing
        early,
        Checkpointer(path / "checkpoints", generator=generator, epochs=spec.train.epochs,
                     every_s=spec.train.checkpoint_every_s, early_stopping=early,
                     before_save=[metrics.flush] + ([monitors.flush] if monitors is not None else [])),
        *([TrajectorySaver(path / "checkpoints" / "trajectory", spec.train.trajectory_every)] if spec.train.trajectory_every else []),
        *([snapshots] if snapshots is not None else []),
        *(extra_callbacks or []),
    ]
    if not quiet:
        callbacks.append(ProgressReporter(spec.train.epochs, len(batches), stream=progress_stream))
    trainer = Trainer(
        model, loss_fn, optimizer, schedule=schedule, callbacks=callbacks, predict=predict,
        penalty=penalty, after_step=after_step, input_noise=spec.regularization.input_noise,
        grad_clip=spec.optimizer.grad_clip, precision=spec.train.precision, compile=spec.train.compile,
    )
    if resume and trainer.scaler is not None and "scaler" in checkpoint:
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    if cluster is not None:  # DDP forward, epoch metrics averaged over ranks, stops agreed; callbacks on rank 0
        cluster.attach(trainer, seed=spec.seed, compile=spec.train.compile,
                       stop_every=spec.checks.every if spec.checks.monitors else None)
    started = time.perf_counter()
    state = trainer.fit(batches, spec.train.epochs, splits.val, state=state)
    if activity is not None:
        activity.remove()
    if not main:  # rank 0 measures, writes the summary, findings and report, and shares the summary
        return RunResult(path=path, summary=cluster.broadcast(None), model=model, splits=splits, rank=cluster.rank)

    summary: dict[str, Any] = {"name": spec.run_name}
    for split_name in ("train", "val", "test"):
        split = getattr(splits, split_name)
        if split is None or not len(split):
            continue
        measured = evaluate(model, loss_fn, split, predict, autocast=trainer.autocast)
        summary[f"{split_name}_loss"] = measured["loss"]
        if "acc" in measured:
            summary[f"{split_name}_acc"] = measured["acc"]
    summary.update({
        "epochs": state.epoch,
        "steps": state.step,
        "best_epoch": early.best_epoch,
        "stopped_early": bool(state.stop),
        "stop_reason": state.stop_reason,
        "diverged": state.diverged,
        "wall_time_s": round(state.elapsed, 3),
        "session_time_s": round(time.perf_counter() - started, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        **environment(device),
    })
    if separation is not None:  # the perceptron's updates over the whole run (resumed segments too)
        summary["mistakes"] = sum(r.get("mistakes", 0) for r in read_jsonl(path / "metrics.jsonl"))
        summary["separated"] = str(state.stop_reason or "").startswith("separated")
    if snapshots is not None:  # Huang et al. 2017: the snapshot ensemble against its last snapshot
        summary["snapshot_ensemble"] = evaluate_snapshots(snapshots.folder, model, spec.loss, splits, keep=spec.train.snapshots)
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    findings = _run_findings(spec, path, splits, findings if not resume else None,
                             monitors.guard if monitors is not None else None)
    summary["findings"] = {sev: sum(f.severity == sev for f in findings) for sev in ("error", "warning", "info")}
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    families.write_artifacts(spec, path, model, splits)  # reconstructions, vocabulary, generated text
    if report:
        _write_report(path)
    if cluster is not None:
        cluster.broadcast(summary)
    return RunResult(path=path, summary=summary, model=model, splits=splits, findings=findings)


def _write_report(path: Path) -> None:
    """report.html, the page to look at (``babysit report RUN`` redraws it). The run is complete
    without it: a failure to draw is reported in one line, not raised."""
    from babysit.report import render

    try:
        render(path)
    except Exception as exc:  # noqa: BLE001 (a figure bug must not cost the user the run's end)
        print(f"report: not written ({type(exc).__name__}: {exc}); the run directory is complete, "
              f"retry with: babysit report {path}", file=sys.stderr)


def _first_loss(path: Path) -> float | None:
    """The loss of a run's first monitor sample: the explosion guard's reference on resume."""
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                loss = json.loads(line).get("loss")
            except json.JSONDecodeError:
                return None
            return loss if isinstance(loss, (int, float)) else None
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (a line cut short by a kill is skipped); [] when missing."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


FIRST_ORDER_RULES = ("update_ratio_high", "update_ratio_low", "lr_too_high", "lr_too_low")


def _run_findings(spec: Experiment, path: Path, splits: data_module.Splits,
                  preflight_findings: list[Any] | None, guard: Any) -> list[Any]:
    """Preflight (kept from the first segment of a resumed run), monitor and diagnosis findings,
    written to findings.json and TensorBoard, most severe first. Reads what the run wrote, so
    a resumed run is judged on all of it."""
    from babysit.checks.diagnose import diagnose_run
    from babysit.checks.findings import PREFLIGHT_IDS, Finding, sort_findings, write_findings
    from babysit.checks.monitors import monitor_findings

    if preflight_findings is None:  # resumed: the preflight ran in the first segment
        preflight_findings = [Finding(**f) for f in read_jsonl_list(path / "findings.json") if f["id"] in PREFLIGHT_IDS]
    found = list(preflight_findings)
    if guard is not None:
        found.append(guard)
    if spec.checks.monitors:
        found += monitor_findings(read_jsonl(path / "monitors.jsonl"))
    chance = losses.chance_loss(spec.loss, splits.task, splits.num_classes, splits.train.y)
    found += diagnose_run(path, chance_loss=chance, task=splits.task)
    if spec.optimizer.name == "newton":
        # the update-ratio and lr rules are first-order rules of thumb (CS231n's 1e-3 for SGD-like
        # steps); Newton sets its own step length and does not use the lr
        found = [f for f in found if f.id not in FIRST_ORDER_RULES]
    if spec.loss == "perceptron":
        # the perceptron criterion has no fixed scale (it grows with ||w||; from w = 0 the lr only scales
        # w, never a decision) and its mistake-driven steps are exactly 0 on every correct example,
        # so the update-ratio and lr rules of thumb and the loss-trend not_converged do not apply;
        # a perceptron has converged when an epoch makes no mistake
        found = [f for f in found if f.id not in (*FIRST_ORDER_RULES, "not_converged")]
        unseparated = separation_finding(read_jsonl(path / "metrics.jsonl"),
                                         json.loads((path / "summary.json").read_text()))
        found += [unseparated] if unseparated is not None else []
    found = sort_findings(found)
    write_findings(path / "findings.json", found)
    _findings_to_tensorboard(path / "tb", found, int(json.loads((path / "summary.json").read_text())["steps"]))
    return found


def read_jsonl_list(path: Path) -> list[dict[str, Any]]:
    """A JSON list file (findings.json); [] when missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return value if isinstance(value, list) else []


def _findings_to_tensorboard(log_dir: Path, findings: list[Any], step: int) -> None:
    """The findings as one markdown text in TensorBoard's Text tab."""
    from torch.utils.tensorboard import SummaryWriter

    from babysit.checks.findings import findings_markdown

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_text("findings", findings_markdown(findings), global_step=step)


def run_line(s: dict[str, Any]) -> str:
    """Epochs (and the best), steps, time, device, and how the run ended, in one line (and the
    snapshot ensemble against its last snapshot on a second, when the run kept snapshots)."""
    best = f" (best {s['best_epoch']})" if s.get("best_epoch") and s["best_epoch"] != s["epochs"] else ""
    line = f"{s['epochs']} epochs{best}, {s['steps']} steps in {s['wall_time_s']:.1f} s on {s['device']}"
    if s.get("diverged"):
        line += "; diverged"
    elif s.get("stop_reason"):
        line += f"; stopped: {s['stop_reason']}"
    if s.get("snapshot_ensemble"):
        line += "\n" + snapshot_line(s["snapshot_ensemble"])
    return line


def summary_table(result: RunResult) -> Any:
    """The end-of-run metrics as a compact rich table: loss (and accuracy) per split
    (:func:`run_line` says how long it ran and how it ended)."""
    from rich.table import Table

    s = result.summary
    classification = any(f"{split}_acc" in s for split in ("train", "val", "test"))
    table = Table(title=f"{s.get('name', result.path.name)}: results", title_justify="left")
    if "d_loss" in s:  # a GAN: its last epoch's adversarial figures (train/gan.py)
        table.add_column("last epoch")
        table.add_column("value", justify="right")
        for key in ("d_loss", "g_loss", "d_real", "d_fake", "diversity"):
            if key in s:
                table.add_row(key, f"{s[key]:.4f}")
        return table
    table.add_column("split")
    table.add_column("loss", justify="right")
    if classification:
        table.add_column("accuracy", justify="right")
    for split in ("train", "val", "test"):
        if f"{split}_loss" in s:
            row = [split, f"{s[f'{split}_loss']:.4f}"]
            if classification:
                row.append(f"{s[f'{split}_acc']:.2%}" if f"{split}_acc" in s else "")
            table.add_row(*row)
    return table
