"""The loop's standard callbacks: metrics, TensorBoard, progress, early stopping, checkpoints,
the live monitors and trajectory snapshots, one file each.

Each is a small object with a few hooks (see :class:`babysit.train.loop.Callback`). None of
them does work per batch except where a user asked for it (``train.log_every``) or where a
clock check is all it costs (the progress bar).
"""

from babysit.train.callbacks.checkpointer import Checkpointer
from babysit.train.callbacks.early_stopping import EarlyStopping
from babysit.train.callbacks.metrics import MetricsLogger, truncate_metrics
from babysit.train.callbacks.monitor import MonitorCallback, monitor_line
from babysit.train.callbacks.progress import ProgressReporter
from babysit.train.callbacks.tensorboard import (
    TENSORBOARD_STATISTICS,
    MonitorEventFile,
    TensorBoardLogger,
    masked_crc32c,
    monitor_summary_values,
)
from babysit.train.callbacks.trajectory import TrajectorySaver

__all__ = ["TENSORBOARD_STATISTICS", "Checkpointer", "EarlyStopping", "MetricsLogger", "MonitorCallback",
           "MonitorEventFile", "ProgressReporter", "TensorBoardLogger", "TrajectorySaver", "masked_crc32c",
           "monitor_line", "monitor_summary_values", "truncate_metrics"]
