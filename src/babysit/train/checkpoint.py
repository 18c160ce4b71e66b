"""Checkpoints: written atomically, loaded without executing pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with
``torch.save`` to a temporary file in the same folder, flushed to disk and renamed over the
target (``os.replace`` is atomic on POSIX), so a run killed at any moment leaves either the
old checkpoint or the new one, never half of one. Loading passes weights_only=True to
torch.load: torch's restricted unpickler, which refuses anything but tensors and
primitive containers.

Example
-------
>>> import tempfile, torch, os
>>> path = os.path.join(tempfile.mkdtemp(), "last.pt")
>>> save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
>>> load_checkpoint(path)["step"]
3
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from babysit.errors import BabysitError
from babysit.rundir import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + fsync + rename)."""
    try:
        with atomic_write(path, "wb", durable=True) as handle:
            torch.save(state, handle)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise BabysitError(f"disk full: the last good checkpoint is kept ({path})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file is a BabysitError."""
    path = Path(path)
    if not path.exists():
        raise BabysitError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise BabysitError(f"{path}: not a readable babysit checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(checkpoint, dict):
        raise BabysitError(f"{path}: holds a {type(checkpoint).__name__}, not a babysit checkpoint")
    return checkpoint


def load_weights(model: torch.nn.Module, checkpoint: dict[str, Any], where: str | Path) -> None:
    """Put ``checkpoint["model"]`` into ``model``; a checkpoint without weights, or with the
    weights of another network (``where`` names its file), is a BabysitError."""
    state = checkpoint.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BabysitError(f"{where}: holds no model weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch lists every missing key and size mismatch: the first says enough
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "another network"
        raise BabysitError(f"{where}: does not fit the network config.yaml builds ({detail[:150]})") from None


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device), for exact resume."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
