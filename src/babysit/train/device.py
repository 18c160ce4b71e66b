"""Where a run trains and how it is seeded: the device, the seeds, the environment it records.

Example
-------
>>> resolve_device("cpu").type
'cpu'
"""

from __future__ import annotations

import platform
import random
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


__all__ = ["environment", "resolve_device", "seed_everything"]
