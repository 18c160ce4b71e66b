"""A finished run, loaded back: its network with the best weights, its data as training made
them, its loss, and its trajectory snapshots. What ``babysit landscape``, ``babysit ensemble``
and ``babysit.load_run`` work on.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from babysit import config
from babysit.errors import BabysitError
from babysit.run.prepare import prepare
from babysit.rundir import weights_file
from babysit.train.checkpoint import load_checkpoint, load_weights

# --------------------------------------------------------------------------- loading a run


@dataclass
class LoadedRun:
    """A run as training left it.

    ``model``: the network with the best weights (``checkpoint`` says which file: best.pt,
    or last.pt when the run saved no best); ``initial_state``: the weights it started from
    (the seeded init, rebuilt); ``splits``: train/val/test exactly as training made them;
    ``loss_fn``: the training loss (the data term: L1, activity and weight decay are not
    in it); ``spec``: the resolved spec from config.yaml.
    """

    path: Path
    spec: Any
    model: nn.Module
    splits: Any
    loss_fn: nn.Module
    checkpoint: str
    device: torch.device
    initial_state: dict[str, Tensor] = field(repr=False, default_factory=dict)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Training seeds the global RNGs; rebuilding a run must not move the caller's."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The model (best weights), data splits and loss of the run in ``path``.

    The spec comes from ``path/config.yaml``; data and network are rebuilt as training
    built them (same seed), on ``device``, and the weights of ``checkpoints/best.pt`` (or
    ``last.pt``) loaded with ``weights_only=True``. The global RNGs are left as they were.
    A missing or damaged run directory is a BabysitError.

    Example
    -------
    >>> import tempfile, torch
    >>> from babysit.config import Experiment
    >>> from babysit.run import run
    >>> spec = Experiment(data={"source": "spirals", "samples": 200}, model={"hidden": [8]}, train={"epochs": 1})
    >>> path = run(spec, out=tempfile.mkdtemp() + "/run", quiet=True).path
    >>> loaded = load_run(path)
    >>> best = torch.load(path / "checkpoints" / "best.pt", weights_only=True)["model"]
    >>> all(torch.equal(loaded.model.state_dict()[k], v) for k, v in best.items())
    True
    """
    path = Path(path)
    if not path.is_dir():
        raise BabysitError(f"{path}: no such run directory")
    if not (path / "config.yaml").is_file():
        raise BabysitError(f"{path}: not a run directory (no config.yaml); give the folder babysit train wrote")
    weights = weights_file(path)
    if weights is None:
        raise BabysitError(f"{path}: no checkpoint (checkpoints/best.pt or last.pt); the run stopped before saving one")
    checkpoints, name = weights.parent, weights.name
    spec = config.load(path / "config.yaml", [f"train.device={torch.device(device).type}"])
    with _global_rng_kept():
        device_used, splits, model, loss_fn = prepare(spec)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    load_weights(model, load_checkpoint(checkpoints / name, map_location=device_used), checkpoints / name)
    model.eval()
    return LoadedRun(path=path, spec=spec, model=model, splits=splits, loss_fn=loss_fn, checkpoint=name,
                     device=device_used, initial_state=initial)


def trajectory_files(run_dir: str | Path) -> list[Path]:
    """The run's weight snapshots (``checkpoints/trajectory/step_*.pt``) in step order."""
    folder = Path(run_dir) / "checkpoints" / "trajectory"
    files = [p for p in folder.glob("step_*.pt") if p.stem.removeprefix("step_").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("step_")))


def load_trajectory(run_dir: str | Path, model: nn.Module) -> tuple[list[int], list[dict[str, Tensor]]]:
    """The steps and weights (``{parameter name: tensor}``, shaped as ``model``'s) of the
    run's trajectory snapshots; a snapshot of another network is a BabysitError."""
    named = dict(model.named_parameters())
    steps, states = [], []
    for file in trajectory_files(run_dir):
        snapshot = load_checkpoint(file)
        names, flat = snapshot.get("names"), snapshot.get("weights")
        if names != list(named) or not isinstance(flat, Tensor) or flat.numel() != sum(p.numel() for p in named.values()):
            raise BabysitError(f"{file}: a snapshot of another network than config.yaml builds")
        pieces = torch.split(flat, [p.numel() for p in named.values()])
        states.append({n: t.view(p.shape) for (n, p), t in zip(named.items(), pieces, strict=True)})
        steps.append(int(snapshot["step"]))
    return steps, states


__all__ = ["LoadedRun", "load_run", "load_trajectory", "trajectory_files"]
