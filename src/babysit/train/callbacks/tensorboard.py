"""TensorBoard event files (``tb/``): each epoch's scalars, and the live monitors' samples."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from babysit.train.callbacks.monitor import MonitorCallback
from babysit.train.loop import Callback, Trainer


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
    ``act_grad_rms``, ``dead_fraction``, ``dormant_fraction``, ``saturated_fraction``: the same numbers as in
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
                          "dormant_fraction", "saturated_fraction")


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


__all__ = ["TENSORBOARD_STATISTICS", "MonitorEventFile", "TensorBoardLogger", "masked_crc32c",
           "monitor_summary_values"]
