"""A finished run, loaded back: its network with the best weights, its data as training made
them, its loss, and its trajectory snapshots. What ``babysit landscape``, ``babysit ensemble``
and ``babysit.load_run`` work on.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from babysit import config
from babysit.data import Split
from babysit.errors import BabysitError
from babysit.run.prepare import prepare
from babysit.rundir import read_run, weights_file
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
def global_rng_kept() -> Iterator[None]:
    """Every global random number generator (random, numpy, torch's CPU one and CUDA's once
    initialised) as it was on entry, again on exit: training seeds them, and rebuilding a run
    or a preflight on a user's module must not move the caller's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


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
    recorded_by = _recorded_by(path)
    if recorded_by is not None:
        raise BabysitError(
            f"{path}: recorded by babysit.{recorded_by} from a training loop of your own, so babysit cannot rebuild "
            f"its network or data from config.yaml; from Python, give them: babysit.landscape_run(\"{path}\", "
            "model=net, data=(x, y), loss_fn=loss_fn)")
    weights = weights_file(path)
    if weights is None:
        raise BabysitError(f"{path}: no checkpoint (checkpoints/best.pt or last.pt); the run stopped before saving one")
    checkpoints, name = weights.parent, weights.name
    spec = config.load(path / "config.yaml", [f"train.device={torch.device(device).type}"])
    with global_rng_kept():
        device_used, splits, model, loss_fn = prepare(spec)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    load_weights(model, load_checkpoint(checkpoints / name, map_location=device_used), checkpoints / name)
    model.eval()
    return LoadedRun(path=path, spec=spec, model=model, splits=splits, loss_fn=loss_fn, checkpoint=name,
                     device=device_used, initial_state=initial)


def _recorded_by(path: Path) -> str | None:
    """What wrote a run babysit did not drive (config.yaml's ``recorded_by``: ``watch``,
    ``lightning``), or None for a run of ``babysit train``."""
    try:
        spec = config.safe_yaml((path / "config.yaml").read_text(encoding="utf-8", errors="replace"))
    except (BabysitError, OSError, ValueError):
        return None
    by = spec.get("recorded_by") if isinstance(spec, dict) else None
    return str(by) if by is not None else None


class _LossModule(nn.Module):
    """A loss function as a module (the landscape moves its loss to a device and dtype)."""

    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.fn(outputs, targets)


def given_run(path: str | Path, model: nn.Module, data: tuple[Tensor, Tensor], loss_fn: Any) -> LoadedRun:
    """A run with the network, data sample and loss the caller gives: a run babysit did not
    drive (``babysit.watch``, the Lightning callback), whose config.yaml cannot rebuild them.
    ``model`` is copied (yours is left as it is); ``data`` stands for the training split; the
    initial weights come from ``checkpoints/initial.pt`` when the run saved them.

    Example
    -------
    >>> import tempfile, torch
    >>> from torch import nn
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.yaml").write_text("name: mine\\nrecorded_by: watch\\noptimizer: {name: sgd, lr: 0.1}\\n")
    >>> loaded = given_run(folder, nn.Linear(3, 2), (torch.randn(8, 3), torch.randint(0, 2, (8,))), nn.CrossEntropyLoss())
    >>> loaded.spec.run_name, loaded.spec.optimizer.lr, len(loaded.splits.train)
    ('mine', 0.1, 8)
    """
    path = Path(path)
    spec = read_run(path).spec
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise BabysitError("data: give an (x, y) pair of tensors, a sample of the training data")
    if len(data[0]) != len(data[1]) or not len(data[0]):
        raise BabysitError(f"data: x holds {len(data[0])} examples and y {len(data[1])}; give one target an input")
    if not isinstance(model, nn.Module):
        raise BabysitError(f"model: give the trained torch.nn.Module, got {type(model).__name__}")
    if loss_fn is None or not callable(loss_fn):
        raise BabysitError("loss_fn: give the training loss, loss_fn(outputs, targets) -> the batch mean")
    settings = spec.get("optimizer") if isinstance(spec.get("optimizer"), dict) else {}
    optimizer = SimpleNamespace(**{"name": "sgd", "lr": float("nan"), "momentum": 0.0, "weight_decay": 0.0,
                                   **{k: v for k, v in settings.items() if k in ("name", "lr", "momentum",
                                                                                 "weight_decay")}})
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    named = SimpleNamespace(run_name=str(spec.get("name") or path.name), optimizer=optimizer,
                            schedule=SimpleNamespace(name="(your loop's)"), train=SimpleNamespace(device=device.type))
    initial: dict[str, Tensor] = {}
    if (path / "checkpoints" / "initial.pt").is_file():
        initial = load_checkpoint(path / "checkpoints" / "initial.pt")["model"]
    given = copy.deepcopy(model).eval()
    loss = loss_fn if isinstance(loss_fn, nn.Module) else _LossModule(loss_fn)
    x, y = data
    splits = SimpleNamespace(train=Split(x.detach().cpu(), y.detach().cpu()))
    return LoadedRun(path=path, spec=named, model=given, splits=splits, loss_fn=loss, checkpoint="the network given", device=device, initial_state=initial)


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


__all__ = ["LoadedRun", "given_run", "global_rng_kept", "load_run", "load_trajectory", "trajectory_files"]
