"""Weight snapshots along the way: the training trajectory ``babysit landscape`` draws."""

from __future__ import annotations

from pathlib import Path

import torch

from babysit.train.checkpoint import save_checkpoint
from babysit.train.loop import Callback, Trainer


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


__all__ = ["TrajectorySaver"]
