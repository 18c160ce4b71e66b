"""Where a run trains and how it is seeded: the device, the seeds, the environment it records.

Example
-------
>>> resolve_device("cpu").type
'cpu'
"""

from __future__ import annotations

import contextlib
import platform
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from babysit.errors import BabysitError


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an unavailable device is a BabysitError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BabysitError("train.device: 'cuda' is not available on this machine; use auto or cpu")
    if name == "mps" and not _mps_available():
        raise BabysitError("train.device: 'mps' is not available on this machine; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(device: torch.device) -> dict[str, Any]:
    """What summary.json records of the machine a run trained on."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


# CPU threads. A small network's step is a few small matrix products, which one thread runs
# faster than two: splitting them costs more than it saves, and on a busy machine two threads
# wait on each other (2 cores, a 2-layer MLP, Adam, batch 128; us per step at 1 / 2 threads
# in benchmarks/threads.py: see THREADS_PARAMS below). Above THREADS_PARAMS torch's default
# thread count is kept.
THREADS_PARAMS = 1_000_000


def run_threads(requested: int | None, parameters: int, device: torch.device) -> int | None:
    """The CPU thread count a run uses: ``requested`` (``train.threads``) when given, else 1 for
    a network under :data:`THREADS_PARAMS` parameters on the CPU; None: torch's default.

    Example
    -------
    >>> run_threads(None, 10_000, torch.device("cpu")), run_threads(4, 10_000, torch.device("cpu"))
    (1, 4)
    >>> run_threads(None, 5_000_000, torch.device("cpu")) is None
    True
    """
    if requested is not None:
        return requested
    return 1 if device.type == "cpu" and parameters < THREADS_PARAMS else None


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block (None: left alone)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["THREADS_PARAMS", "cpu_threads", "environment", "resolve_device", "run_threads", "seed_everything"]
