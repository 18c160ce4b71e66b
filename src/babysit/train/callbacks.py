"""The loop's standard callbacks: metrics, TensorBoard, progress, early stopping, checkpoints.

Each is a small object with a few hooks (see :class:`babysit.train.loop.Callback`). None of
them does work per batch except where a user asked for it (``train.log_every``) or where a
clock check is all it costs (the progress bar).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from babysit.train.checkpoint import rng_state, save_checkpoint
from babysit.train.loop import Callback, Trainer


def _clean(value: Any) -> Any:
    """JSON has no NaN or inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger(Callback):
    """Appends one JSON object per logged point to ``metrics.jsonl``.

    Every epoch end is logged (step, epoch, lr, train_loss, train_acc, val_loss, val_acc,
    time); with ``log_every`` the training loss of every N-th batch is logged too (one
    ``.item()`` sync at those steps only).
    """

    def __init__(self, path: str | Path, log_every: int | None = None, flush_every_s: float = 2.0):
        self.path = Path(path)
        self.log_every = log_every
        self.flush_every_s = flush_every_s
        self._handle = None
        self._last_flush = 0.0
        if log_every is None:  # no per-batch work at all
            self.on_batch_end = Callback.on_batch_end.__get__(self)  # type: ignore[method-assign]

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.log_every and trainer.state.step % self.log_every == 0:
            self._write({
                "step": trainer.state.step,
                "epoch": trainer.state.epoch,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "batch_loss": loss.item(),
            })

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._write(dict(logs))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Hand buffered lines to the OS (the checkpointer calls this before each save, so a
        killed run never has a checkpoint newer than its metrics)."""
        if self._handle is not None:
            self._handle.flush()
        self._last_flush = time.monotonic()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop logged points after ``last_step`` (used when resuming from a checkpoint)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


class TensorBoardLogger(Callback):
    """Scalars of every epoch, and the live monitors' samples, to TensorBoard event files (``tb/``).

    Each epoch's scalars go into one event (``add_scalar`` would build and write one event
    per value), and events are handed to the writer at most every ``every_s`` seconds and
    at the end: on short epochs the writer's background thread would otherwise wake up,
    and take the GIL, every few milliseconds.

    With ``monitors`` (a :class:`MonitorCallback`), each monitor sample becomes one event
    too, built at those same writes into an event file of its own next to the writer's
    (checksummed many at once: :func:`masked_crc32c`): ``monitors/loss``,
    ``monitors/<layer>/<statistic>`` for the statistics the report draws (``update_ratio``, ``grad_norm``, ``act_std``,
    ``act_grad_rms``, ``dead_fraction``, ``saturated_fraction``: the same numbers as in
    ``monitors.jsonl``) and ``monitors/<layer>/activations``, a histogram, where the sample
    has one; so ``tensorboard --logdir runs`` shows what the report shows.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> monitors = MonitorCallback(folder + "/monitors.jsonl", every=10)
    >>> tensorboard = TensorBoardLogger(folder + "/tb", monitors=monitors)
    >>> # Trainer(model, loss_fn, optimizer, callbacks=[tensorboard, monitors]).fit(...)
    """

    def __init__(self, log_dir: str | Path, every_s: float = 5.0, monitors: MonitorCallback | None = None):
        self.log_dir = Path(log_dir)
        self.every_s = every_s
        self.monitors = monitors
        if monitors is not None:
            monitors.tensorboard = self  # it hands over its records as it writes monitors.jsonl
        self.writer = None
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._pending_monitors: list[dict[str, Any]] = []
        self._monitor_file: MonitorEventFile | None = None
        self._last = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._last = time.monotonic()

    def add_monitor_records(self, records: list[dict[str, Any]]) -> None:
        """Queue monitor records (as in ``monitors.jsonl``) for the next write."""
        self._pending_monitors.extend(records)

    def _write_pending(self) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        assert self.writer is not None
        file_writer = self.writer._get_file_writer()
        for step, logs in self._pending:
            values = [
                Summary.Value(tag="lr" if key == "lr" else key.replace("_", "/", 1), simple_value=float(value))  # train/loss, val/acc...
                for key, value in logs.items()
                if key not in ("step", "epoch") and value is not None
            ]
            file_writer.add_summary(Summary(value=values), step)
        if self._pending_monitors:
            if self._monitor_file is None:
                self._monitor_file = MonitorEventFile(self.log_dir)
            self._monitor_file.write(self._pending_monitors)
        self._pending.clear()
        self._pending_monitors.clear()
        self._last = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._pending.append((int(logs["step"]), dict(logs)))
        if time.monotonic() - self._last >= self.every_s:
            self._write_pending()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.monitors is not None:
            self.monitors.flush()  # the last samples, whichever of the two ends first
        if self.writer is not None:
            self._write_pending()
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self._monitor_file is not None:
            self._monitor_file.close()
            self._monitor_file = None


def masked_crc32c(chunks: list[bytes]) -> list[int]:
    """TFRecord's masked CRC-32C of each of ``chunks``, computed for all of them at once.

    tensorboard's own writer checksums in pure Python, byte by byte (~0.1 ms a KB, on a thread
    that holds the GIL): as long, per monitor sample, as a tenth of the sampling itself. Here
    one numpy step per byte position runs over every chunk together, so hundreds of events
    cost about what one does. Same table and mask as tensorboard's ``masked_crc32c``.
    """
    import numpy as np
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import CRC_TABLE

    table = np.array(CRC_TABLE, dtype=np.uint32)
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))  # longest first
    lengths = np.array([len(chunks[i]) for i in order], dtype=np.int64)
    present = np.arange(int(lengths.max(initial=0))) < lengths[:, None]  # (chunks, longest)
    data = np.zeros(present.shape, dtype=np.uint8)
    data[present] = np.frombuffer(b"".join(chunks[i] for i in order), dtype=np.uint8)
    crc = np.full(len(chunks), 0xFFFFFFFF, dtype=np.uint32)
    still = present.sum(axis=0).tolist()  # at each byte position, the chunks not yet ended: a prefix
    for position, k in enumerate(still):
        crc[:k] = table[(crc[:k] ^ data[:k, position]) & 0xFF] ^ (crc[:k] >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    masked = (((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)).tolist()  # uint32: wraps as in C
    result = [0] * len(chunks)
    for at, i in enumerate(order):
        result[i] = masked[at]
    return result


class MonitorEventFile:
    """A TensorBoard event file for monitor records, appended in batches (TFRecord framing:
    length, its checksum, the serialized ``Event``, its checksum)."""

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto.event_pb2 import Event

        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.monitors"
        self.path = log_dir / name
        self._handle = self.path.open("ab")
        self._write_events([Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()])

    def write(self, records: list[dict[str, Any]]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        now = time.time()
        self._write_events([Event(wall_time=now, step=int(record["step"]),
                                  summary=Summary(value=monitor_summary_values(record))).SerializeToString()
                            for record in records])

    def _write_events(self, events: list[bytes]) -> None:
        lengths = [struct.pack("<Q", len(event)) for event in events]
        checksums = [struct.pack("<I", crc) for crc in masked_crc32c(lengths + events)]
        n = len(events)
        self._handle.write(b"".join(length + checksums[i] + event + checksums[n + i]
                                    for i, (length, event) in enumerate(zip(lengths, events, strict=True))))
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


# The per-layer statistics the report draws: these go to TensorBoard (each number more is
# bytes to encode and checksum on the training thread); the rest stay in monitors.jsonl.
TENSORBOARD_STATISTICS = ("update_ratio", "grad_norm", "act_std", "act_grad_rms", "dead_fraction",
                          "saturated_fraction")


def monitor_summary_values(record: dict[str, Any]) -> list[Any]:
    """One monitor record as TensorBoard summary values: its loss and each layer's
    :data:`TENSORBOARD_STATISTICS` as scalars, the activation histogram (``hist``) as a
    histogram."""
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

    values = []
    if isinstance(record.get("loss"), (int, float)):
        values.append(Summary.Value(tag="monitors/loss", simple_value=float(record["loss"])))
    for layer, entry in record["layers"].items():
        for key in TENSORBOARD_STATISTICS:
            if key in entry and entry[key] is not None:
                values.append(Summary.Value(tag=f"monitors/{layer}/{key}", simple_value=float(entry[key])))
        hist = entry.get("hist")
        if hist and hist["counts"]:
            counts, lo, hi = hist["counts"], hist["lo"], hist["hi"]
            n = sum(counts)
            width = (hi - lo) / len(counts)
            # the sums TensorBoard shows come from the exact mean and std of the same activations
            mean, std = entry.get("act_mean", 0.0), entry.get("act_std", 0.0)
            values.append(Summary.Value(tag=f"monitors/{layer}/activations", histo=HistogramProto(
                min=lo, max=hi, num=n, sum=mean * n, sum_squares=std * std * max(n - 1, 0) + n * mean * mean,
                bucket_limit=[lo + width * (i + 1) for i in range(len(counts))], bucket=counts)))
    return values


def _describe(logs: dict[str, float]) -> str:
    parts = []
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if key in logs and logs[key] is not None:
            value = logs[key]
            parts.append(f"{key} {value:.2%}" if key.endswith("acc") else f"{key} {value:.4f}")
    if "mistakes" in logs:  # a perceptron's updates this epoch
        parts.append(f"mistakes {logs['mistakes']}")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    return "  ".join(parts)


class ProgressReporter(Callback):
    """A rich progress bar on a terminal; a plain line every ``every_s`` seconds otherwise.

    The bar advances per batch but redraws at most ``refresh_hz`` times a second: the only
    per-batch cost is a clock read.
    """

    def __init__(self, total_epochs: int, steps_per_epoch: int, *, every_s: float = 5.0,
                 refresh_hz: float = 8.0, stream: Any = None, force_plain: bool | None = None):
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.every_s = every_s
        self.min_interval = 1.0 / refresh_hz
        self.stream = stream or sys.stdout
        self.plain = force_plain if force_plain is not None else not self.stream.isatty()
        self._progress = None
        self._task = None
        self._last = 0.0
        self._last_epoch_logs: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self._last = time.monotonic()
        if self.plain:
            if trainer.state.epoch:
                print(f"resuming at epoch {trainer.state.epoch}/{self.total_epochs}", file=self.stream, flush=True)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=Console(file=self.stream),
            auto_refresh=False,
            transient=False,
        )
        self._progress.start()
        total = self.total_epochs * self.steps_per_epoch
        self._task = self._progress.add_task(
            "train", total=total, completed=trainer.state.step if trainer.state.epoch else 0,
            epoch=trainer.state.epoch, epochs=self.total_epochs, metrics="")

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return
        self._last_batch_update(trainer, loss, now)

    def _last_batch_update(self, trainer: Trainer, loss: torch.Tensor, now: float) -> None:
        if self.plain:
            if now - self._last >= self.every_s:
                self._last = now
                print(f"epoch {trainer.state.epoch + 1}/{self.total_epochs}  step {trainer.state.step}  "
                      f"batch_loss {loss.item():.4f}", file=self.stream, flush=True)
            return
        self._last = now
        assert self._progress is not None
        metrics = _describe(self._last_epoch_logs) or f"batch_loss {loss.item():.4f}"
        self._progress.update(self._task, completed=trainer.state.step, epoch=trainer.state.epoch + 1, metrics=metrics)
        self._progress.refresh()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._last_epoch_logs = logs
        now = time.monotonic()
        if self.plain:
            last_epoch = trainer.state.epoch >= self.total_epochs or trainer.state.stop
            if now - self._last >= self.every_s or last_epoch or trainer.state.epoch == 1:
                self._last = now
                print(f"epoch {trainer.state.epoch}/{self.total_epochs}  {_describe(logs)}", file=self.stream, flush=True)
            return
        assert self._progress is not None
        self._progress.update(self._task, completed=trainer.state.step, epoch=trainer.state.epoch, metrics=_describe(logs))
        if now - self._last >= self.min_interval:
            self._last = now
            self._progress.refresh()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            if trainer.state.stop:  # stopped early: show the bar where it stopped
                self._progress.update(self._task, total=trainer.state.step)
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
        if trainer.state.stop_reason:
            print(trainer.state.stop_reason, file=self.stream, flush=True)


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved for ``patience`` epochs, and at the
    end of the run puts back the weights of the best epoch.

    It also keeps the best weights in memory for :class:`Checkpointer`'s ``best.pt``.
    With ``patience=None`` it only tracks the best epoch (no stop, no restore).
    """

    def __init__(self, monitor: str = "val_loss", patience: int | None = 10, min_delta: float = 0.0):
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.mode = "max" if monitor.endswith("acc") else "min"
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _value(self, logs: dict[str, float]) -> float | None:
        if self.monitor in logs:
            return logs[self.monitor]
        # no validation split: fall back to the training counterpart
        fallback = self.monitor.replace("val_", "train_")
        return logs.get(fallback)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        value = self._value(logs)
        if value is None or not math.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, trainer.state.epoch, 0
            state = trainer.model.state_dict()
            if self.best_weights is not None and self.best_weights.keys() == state.keys():
                for key, tensor in state.items():  # reuse the buffers: no allocation per epoch
                    self.best_weights[key].copy_(tensor)
            else:
                self.best_weights = {k: v.detach().clone() for k, v in state.items()}
        else:
            self.bad_epochs += 1
            if self.patience is not None and self.bad_epochs >= self.patience:
                trainer.state.stop = True
                trainer.state.stop_reason = (f"early stopping at epoch {trainer.state.epoch}: {self.monitor} has not "
                                             f"improved for {self.patience} epochs (best {self.best:.4g} at epoch {self.best_epoch})")

    def on_fit_end(self, trainer: Trainer) -> None:
        # a diverged run always gets its best weights back: the last ones are NaN or worse
        if (self.patience is not None or trainer.state.diverged) and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any], best_weights: dict[str, torch.Tensor] | None) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_weights = None if best_weights is None else {k: v.clone() for k, v in best_weights.items()}


class Checkpointer(Callback):
    """Writes ``checkpoints/last.pt`` (everything needed to resume) and ``best.pt`` (the best
    weights so far), atomically, at most every ``every_s`` seconds and after the last epoch.

    Time-gating keeps the cost of fsync off short epochs; a run killed between saves resumes
    from the last one and loses at most ``every_s`` seconds of work.
    """

    def __init__(self, folder: str | Path, *, generator: torch.Generator, epochs: int, every_s: float = 10.0,
                 early_stopping: EarlyStopping | None = None, extra: Callable[[], dict[str, Any]] | None = None,
                 before_save: list[Callable[[], None]] | None = None):
        self.folder = Path(folder)
        self.epochs = epochs
        self.before_save = before_save or []
        self._saved_best_epoch: int | None = None
        self.generator = generator
        self.every_s = every_s
        self.early_stopping = early_stopping
        self.extra = extra
        self._last_save = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._last_save = time.monotonic()

    def save(self, trainer: Trainer) -> None:
        state = trainer.state
        checkpoint = {
            "format": "babysit-checkpoint-1",
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "schedule": trainer.schedule.state_dict() if trainer.schedule is not None else None,
            "loop": {"epoch": state.epoch, "step": state.step, "stop": state.stop,
                     "stop_reason": state.stop_reason, "elapsed": state.elapsed,
                     "logs": {k: float(v) for k, v in state.logs.items()}},
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
        }
        if trainer.scaler is not None:
            checkpoint["scaler"] = trainer.scaler.state_dict()
        if self.extra is not None:
            checkpoint.update(self.extra())
        for hook in self.before_save:
            hook()
        es = self.early_stopping
        if es is not None and es.best_weights is not None and es.best_epoch != self._saved_best_epoch:
            save_checkpoint(self.folder / "best.pt", {"model": es.best_weights, "epoch": es.best_epoch,
                                                      "monitor": es.monitor, "value": es.best})
            self._saved_best_epoch = es.best_epoch
        save_checkpoint(self.folder / "last.pt", checkpoint)
        self._last_save = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # the final save happens here, before EarlyStopping.on_fit_end puts the best weights
        # back, so last.pt always holds the last weights
        final = trainer.state.stop or trainer.state.epoch >= self.epochs
        if trainer.state.diverged:
            return  # the weights are bad: keep the last good checkpoint as it is
        if final or time.monotonic() - self._last_save >= self.every_s:
            self.save(trainer)


def _json_number(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return _clean(value)


def monitor_line(record: dict[str, Any]) -> str:
    """A monitor record as one JSON line; NaN / inf (rare: a diverging run) become null."""
    line = json.dumps(record)
    if "NaN" in line or "Infinity" in line:
        line = json.dumps(_json_number(record))
    return line + "\n"


class MonitorCallback(Callback):
    """The live monitors and the explosion guard in the loop (see :mod:`babysit.checks.monitors`).

    Samples every ``every`` steps into ``monitors.jsonl``; when the guard trips
    (``loss_exploded`` / ``nonfinite_loss``) the run stops at once, the loop is marked
    ``diverged`` so that no checkpoint is written from the bad weights, and the finding is
    kept in :attr:`guard`. A :class:`TensorBoardLogger` given this callback (``monitors=``)
    gets the records as they are written (:attr:`tensorboard`).
    """

    def __init__(self, path: str | Path, *, every: int = 10, explosion_factor: float = 3.0,
                 initial_loss: float | None = None, flush_every_s: float = 2.0):
        self.path = Path(path)
        self.every = every
        self.explosion_factor = explosion_factor
        self.initial_loss = initial_loss
        self.flush_every_s = flush_every_s
        self.monitor: Any = None
        self._handle = None
        self._unwritten: list[dict[str, Any]] = []
        self._last_flush = 0.0
        self.tensorboard: TensorBoardLogger | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from babysit.checks.monitors import Monitor

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self._last_flush = time.monotonic()
        self.monitor = Monitor(trainer.model, trainer.optimizer, every=self.every,
                               explosion_factor=self.explosion_factor, sink=self._write,
                               start_step=trainer.state.step, initial_loss=self.initial_loss,
                               # no module hooks under compile; DDP (torchrun) calls the module itself
                               activations=trainer.forward is trainer.model
                               or (isinstance(trainer.forward, torch.nn.parallel.DistributedDataParallel)
                                   and trainer.forward.module is trainer.model))

    def _write(self, record: dict[str, Any]) -> None:
        # encoded in bulk at the next flush: one sample's worth of JSON costs several times
        # more on its own, in the middle of training, than in a loop over many
        self._unwritten.append(record)

    def _stop(self, trainer: Trainer, finding: Any) -> None:
        trainer.state.stop = True
        trainer.state.diverged = True
        trainer.state.stop_reason = f"{finding.id}: {finding.message}"

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.monitor.observe_loss(loss) is not None:
            self._stop(trainer, self.monitor.guard)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # between samples: the epoch's mean loss is already on the host
        if not trainer.state.diverged and "train_loss" in logs:
            finding = self.monitor.check_loss(logs["train_loss"], trainer.state.step)
            if finding is not None:
                self._stop(trainer, finding)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples (the checkpointer calls this before each save)."""
        if self.monitor is not None:
            self.monitor.flush()
        if self._handle is not None:
            self._handle.write("".join(monitor_line(record) for record in self._unwritten))
            self._handle.flush()
        if self.tensorboard is not None and self._unwritten:
            self.tensorboard.add_monitor_records(self._unwritten)
        self._unwritten.clear()
        self._last_flush = time.monotonic()

    @property
    def guard(self) -> Any:
        return None if self.monitor is None else self.monitor.guard

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.monitor is not None:
            self.monitor.detach()
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TrajectorySaver(Callback):
    """Saves the flat weights every ``every`` steps (and at step 0) to
    ``folder/step_000100.pt``: the training trajectory ``babysit landscape --what
    trajectory`` draws (PCA directions of the path, Li et al. 2018, section 7).

    Each snapshot is ``{"format", "step", "epoch", "names", "weights"}``: the parameters in
    ``named_parameters`` order concatenated into one float tensor on the CPU, written
    atomically (:func:`~babysit.train.checkpoint.save_checkpoint`) and loadable with
    ``weights_only=True``. Between snapshots a step costs one modulo. On resume, snapshots
    after the resumed step (from the segment that was lost) are removed: the steps are run
    again and save their own.

    Example
    -------
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from babysit.data.batching import Batches
    >>> folder = tempfile.mkdtemp()
    >>> model = nn.Linear(2, 2)
    >>> trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
    ...                   callbacks=[TrajectorySaver(folder, every=2)])
    >>> x, y = torch.randn(32, 2), torch.randint(0, 2, (32,))
    >>> _ = trainer.fit(Batches(x, y, 8, torch.Generator().manual_seed(0)), epochs=1)
    >>> sorted(p.name for p in Path(folder).glob("*.pt"))
    ['step_000000.pt', 'step_000002.pt', 'step_000004.pt']
    """

    def __init__(self, folder: str | Path, every: int):
        if every < 1:
            raise ValueError(f"every: must be >= 1, got {every}")
        self.folder = Path(folder)
        self.every = every

    @staticmethod
    def path_for(folder: str | Path, step: int) -> Path:
        return Path(folder) / f"step_{step:06d}.pt"

    def on_fit_start(self, trainer: Trainer) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("step_*.pt"):
            step = old.stem.removeprefix("step_")
            if step.isdigit() and int(step) > trainer.state.step:
                old.unlink()
        if trainer.state.step == 0:
            self.save(trainer)

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if trainer.state.step % self.every == 0:
            self.save(trainer)

    def save(self, trainer: Trainer) -> None:
        named = list(trainer.model.named_parameters())
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for _, p in named]).cpu()
        save_checkpoint(self.path_for(self.folder, trainer.state.step), {
            "format": "babysit-trajectory-1",
            "step": trainer.state.step,
            "epoch": trainer.state.epoch,
            "names": [name for name, _ in named],
            "weights": flat,
        })
