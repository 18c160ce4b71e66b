"""Ensembles: average what several networks predict; snapshot ensembles from one run.

Networks trained from different random seeds make partly independent errors, so the mean of
their predicted class probabilities is more often right than any one of them (Hansen &
Salamon 1990; Lakshminarayanan et al. 2017). How members are combined depends on the loss:

- ``cross_entropy`` / ``nll``: the mean of the softmax probabilities,
  ``p = 1/M sum_m softmax(z_m)``, computed in log space
  (``log p = logsumexp_m log_softmax(z_m) - log M``, no underflow);
- ``bce``: the mean of the sigmoid probabilities, per logit;
- ``hinge``, ``mse``, ``mae`` and every regression: the mean of the raw outputs (scores
  that are not probabilities, or the predicted values themselves).

The combined prediction is turned back into outputs of the same kind the members give
(``log p`` are logits whose softmax is ``p``; ``logit(p)`` for a sigmoid), so the run's own
loss and accuracy functions score the ensemble: its cross-entropy is exactly the negative
log of the averaged probability of the true class.

A snapshot ensemble (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free")
takes its members from one run: with a cyclic schedule (``cosine_restarts``, SGDR, or
``cyclic``) the weights at the end of each cycle, where the learning rate is lowest, sit in
different minima. ``train.snapshots: K`` saves them (:class:`SnapshotSaver`) and scores
the last K together at the end of the run (:func:`evaluate_snapshots`).

``babysit ensemble RUN RUN ...`` (:func:`babysit.run.ensemble.ensemble_runs`) rebuilds each run's data exactly
as it trained (its own seed and preprocessing), loads its best weights, checks that every
member is scored on the same test examples and reports the members and the ensemble.

Example
-------
>>> import torch
>>> from babysit.data import Split
>>> torch.manual_seed(0) and None
>>> split = Split(torch.randn(50, 4), torch.randint(0, 3, (50,)))
>>> models = [torch.nn.Linear(4, 3) for _ in range(3)]
>>> scores = evaluate_ensemble(models, "cross_entropy", split)
>>> sorted(scores), len(scores["members"])
(['acc', 'loss', 'members'], 3)
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babysit.config import Experiment, ScheduleSpec
from babysit.data import Split, Splits
from babysit.errors import BabysitError
from babysit.optim import losses
from babysit.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from babysit.train.loop import Callback, Trainer

SOFTMAX_LOSSES = ("cross_entropy", "nll")
SIGMOID_LOSSES = ("bce",)
CYCLIC_SCHEDULES = ("cosine_restarts", "cyclic")
SNAPSHOT_FORMAT = "babysit-snapshot-1"


def combination(loss_name: str, task: str = "classification") -> str:
    """In words, what the ensemble averages for this loss (written to ensemble.json).

    Example
    -------
    >>> combination("cross_entropy"), combination("mse", "regression")
    ('mean of softmax probabilities', 'mean of outputs')
    """
    if task == "classification" and loss_name in SOFTMAX_LOSSES:
        return "mean of softmax probabilities"
    if task == "classification" and loss_name in SIGMOID_LOSSES:
        return "mean of sigmoid probabilities"
    return "mean of outputs"


def combine_outputs(outputs: Tensor, loss_name: str, task: str = "classification") -> Tensor:
    """The ensemble's outputs from its members' raw outputs, in the members' own output space.

    ``outputs`` is ``(M, B, ...)``: M members' raw outputs for the same B examples. For
    softmax losses the result is ``log(mean_m softmax(z_m))`` (logits whose softmax is the
    averaged probability); for bce ``logit(mean_m sigmoid(z_m))``; otherwise the mean output.

    Example
    -------
    >>> import torch
    >>> z = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # two members, one example, two classes
    >>> combine_outputs(z, "cross_entropy").softmax(-1)  # each member 88% sure, of opposite classes
    tensor([[0.5000, 0.5000]])
    """
    members = outputs.shape[0]
    if task == "classification" and loss_name in SOFTMAX_LOSSES:
        return torch.logsumexp(F.log_softmax(outputs, dim=-1), dim=0) - math.log(members)  # (M, B, C) -> (B, C)
    if task == "classification" and loss_name in SIGMOID_LOSSES:
        log_p = torch.logsumexp(F.logsigmoid(outputs), dim=0) - math.log(members)  # log of the mean p
        log_not_p = torch.logsumexp(F.logsigmoid(-outputs), dim=0) - math.log(members)  # log of the mean 1 - p
        return log_p - log_not_p
    return outputs.mean(dim=0)


def _splits_per_member(split: Split | Sequence[Split], members: int) -> list[Split]:
    if isinstance(split, Split):
        return [split] * members
    splits = list(split)
    if len(splits) != members:
        raise ValueError(f"evaluate_ensemble: {members} models but {len(splits)} splits; give one split, or one per model")
    first = splits[0]
    for other in splits[1:]:
        if len(other) != len(first) or not torch.equal(other.y, first.y):
            raise ValueError("evaluate_ensemble: the per-model splits must hold the same examples (their targets differ)")
    return splits


@torch.no_grad()
def evaluate_ensemble(
    models: Sequence[nn.Module],
    loss_name: str,
    split: Split | Sequence[Split],
    *,
    task: str | None = None,
    num_classes: int | None = None,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """Loss (and accuracy) of the ensemble of ``models`` on ``split``, and of each member.

    Parameters
    ----------
    models: the members, on the split's device; each is evaluated in eval mode.
    loss_name: the loss the members were trained with ('cross_entropy', 'bce', 'mse'...);
        it decides how they are combined (:func:`combine_outputs`) and scored.
    split: the examples, or one :class:`~babysit.data.Split` per member holding the same
        examples prepared for that member (members trained with different seeds standardize
        their inputs with statistics of their own training split).
    task: 'classification' or 'regression'; default: classification for integer targets.
    num_classes: default: the number of outputs (2 for one bce logit).

    Returns
    -------
    ``{"loss": ..., "acc": ..., "members": [{"loss": ..., "acc": ...}, ...]}`` (no
    ``acc`` for regression), losses averaged over the examples as the run's own loss does.

    Example
    -------
    >>> import torch
    >>> from babysit.data import Split
    >>> model = torch.nn.Linear(3, 2)
    >>> split = Split(torch.randn(20, 3), torch.randint(0, 2, (20,)))
    >>> one = evaluate_ensemble([model], "cross_entropy", split)
    >>> abs(one["loss"] - one["members"][0]["loss"]) < 1e-6  # an ensemble of one is the model
    True
    """
    if not models:
        raise ValueError("evaluate_ensemble: no models")
    splits = _splits_per_member(split, len(models))
    first = splits[0]
    if task is None:
        task = "regression" if first.y.is_floating_point() else "classification"
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    n = len(first)
    device = first.x.device
    member_loss = torch.zeros(len(models), device=device, dtype=torch.float64)
    member_correct = torch.zeros(len(models), device=device, dtype=torch.int64)
    ensemble_loss = torch.zeros((), device=device, dtype=torch.float64)
    ensemble_correct = torch.zeros((), device=device, dtype=torch.int64)
    loss_fn = None
    classify = task == "classification"
    for start in range(0, n, batch_size):
        yb = first.y[start : start + batch_size]
        outputs = torch.stack([model(s.x[start : start + batch_size]) for model, s in zip(models, splits, strict=True)])
        if loss_fn is None:
            if classify and num_classes is None:
                num_classes = 2 if outputs.shape[-1] == 1 else int(outputs.shape[-1])
            loss_fn = losses.build_loss(loss_name, task, num_classes)
        combined = combine_outputs(outputs, loss_name, task)
        for i, out in enumerate(outputs):
            member_loss[i] += loss_fn(out, yb).double() * len(yb)
            if classify:
                member_correct[i] += (losses.predict(out, loss_name) == yb).sum()
        ensemble_loss += loss_fn(combined, yb).double() * len(yb)
        if classify:
            ensemble_correct += (losses.predict(combined, loss_name) == yb).sum()
    for m, mode in zip(models, was_training, strict=True):
        m.train(mode)

    def scores(loss: Tensor, correct: Tensor) -> dict[str, float]:
        result = {"loss": loss.item() / max(n, 1)}
        if classify:
            result["acc"] = correct.item() / max(n, 1)
        return result

    return {**scores(ensemble_loss, ensemble_correct),
            "members": [scores(member_loss[i], member_correct[i]) for i in range(len(models))]}


# --------------------------------------------------------------------------- snapshot ensembles


def cycle_end_steps(schedule: ScheduleSpec, steps_per_epoch: int, epochs: int) -> list[int]:
    """The optimizer steps after which a cycle of a cyclic schedule ends, within the run.

    The schedules (:mod:`babysit.optim.schedules`) count optimizer steps after the warm-up
    ``W``. ``cosine_restarts`` (SGDR) runs periods of ``cycle_epochs * steps_per_epoch``
    steps, each ``cycle_mult`` times longer than the last, and restarts after each: its
    lowest learning rate is on the last step of a period. ``cyclic`` (triangular) climbs for
    half a cycle and falls for the rest, back to ``base_lr`` when the cycle ends. A cycle
    that would end after the run's last step is not counted.

    Example
    -------
    >>> from babysit.config import ScheduleSpec
    >>> cycle_end_steps(ScheduleSpec(name="cosine_restarts", cycle_epochs=2, cycle_mult=2), 10, 14)
    [20, 60, 140]
    >>> cycle_end_steps(ScheduleSpec(name="cyclic", cycle_epochs=5, warmup_steps=3), 10, 20)
    [53, 103, 153]
    """
    if schedule.name not in CYCLIC_SCHEDULES:
        raise BabysitError(f"train.snapshots: needs schedule.name cosine_restarts or cyclic, got {schedule.name!r}")
    total = steps_per_epoch * epochs
    period = schedule.cycle_epochs * steps_per_epoch
    if schedule.name == "cyclic":
        up = max(1, period // 2)  # as schedules.py builds CyclicLR: half up, the rest down
        period = up + max(1, period - up)
    growth = schedule.cycle_mult if schedule.name == "cosine_restarts" else 1
    ends, step = [], schedule.warmup_steps
    while step + period <= total:
        step += period
        ends.append(step)
        period *= growth
    return ends


def _snapshot_cycle(path: Path) -> int | None:
    match = re.fullmatch(r"cycle-(\d+)\.pt", path.name)
    return int(match.group(1)) if match else None


def snapshot_files(folder: str | Path) -> list[Path]:
    """The snapshot files in ``folder`` (``cycle-NNN.pt``), oldest cycle first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(c, p) for p in folder.iterdir() if (c := _snapshot_cycle(p)) is not None]
    return [p for _, p in sorted(found)]


class SnapshotSaver(Callback):
    """Saves the weights at the end of every cycle of a cyclic schedule and keeps the last ``keep``.

    Each snapshot is ``folder/cycle-NNN.pt`` (``{"format", "model", "cycle", "epoch",
    "step"}``), written atomically; older ones are deleted once a newer one is on disk. When
    every cycle ends at an epoch's end (no warm-up, or one of whole epochs) the callback
    looks at the step count once an epoch; otherwise once a step (one integer comparison).
    A diverged run saves nothing. On resume the files already there are kept and a cycle
    run again overwrites its own snapshot.

    Example
    -------
    >>> import tempfile
    >>> saver = SnapshotSaver(tempfile.mkdtemp(), end_steps=[20, 40], keep=2, steps_per_epoch=10)
    >>> # Trainer(model, loss_fn, optimizer, schedule=..., callbacks=[saver]).fit(batches, 4)
    """

    def __init__(self, folder: str | Path, end_steps: Sequence[int], keep: int, steps_per_epoch: int):
        self.folder = Path(folder)
        self.cycle_of_step = {step: i + 1 for i, step in enumerate(end_steps)}
        self.keep = keep
        if all(step % steps_per_epoch == 0 for step in end_steps):
            self.on_batch_end = Callback.on_batch_end.__get__(self)  # type: ignore[method-assign]
        else:
            self.on_epoch_end = Callback.on_epoch_end.__get__(self)  # type: ignore[method-assign]

    def _maybe_save(self, trainer: Trainer) -> None:
        state = trainer.state
        cycle = self.cycle_of_step.get(state.step)
        if cycle is None or state.diverged:
            return
        save_checkpoint(self.folder / f"cycle-{cycle:03d}.pt", {
            "format": SNAPSHOT_FORMAT, "model": trainer.model.state_dict(), "cycle": cycle,
            "epoch": state.epoch, "step": state.step,
        })
        for old in snapshot_files(self.folder):
            if (_snapshot_cycle(old) or 0) <= cycle - self.keep:
                old.unlink(missing_ok=True)

    def on_batch_end(self, trainer: Trainer, loss: Tensor) -> None:
        self._maybe_save(trainer)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._maybe_save(trainer)


def snapshot_callback(spec: Experiment, checkpoints: str | Path, steps_per_epoch: int) -> SnapshotSaver | None:
    """The :class:`SnapshotSaver` for a spec with ``train.snapshots`` (None without), saving to
    ``checkpoints/snapshots/``."""
    if spec.train.snapshots is None:
        return None
    ends = cycle_end_steps(spec.schedule, steps_per_epoch, spec.train.epochs)
    return SnapshotSaver(Path(checkpoints) / "snapshots", ends, spec.train.snapshots, steps_per_epoch)


def evaluate_snapshots(folder: str | Path, model: nn.Module, loss_name: str, splits: Splits,
                       keep: int | None = None) -> dict[str, Any]:
    """Score the snapshot ensemble in ``folder`` (the last ``keep`` snapshots) and its last snapshot.

    ``model`` gives the architecture (it is copied, not changed). Returns the ensemble's
    ``val_loss/val_acc/test_loss/test_acc``, ``last_snapshot`` with the same keys, the
    snapshots' cycles, epochs and steps, and ``members`` (each snapshot's scores).
    """
    files = snapshot_files(folder)
    if keep is not None:
        files = files[-keep:]
    if not files:
        return {"snapshots": 0, "note": "no cycle of the schedule ended within the run; no snapshot was taken"}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    models, info = [], []
    for path in files:
        checkpoint = load_checkpoint(path, map_location=device)
        member = copy.deepcopy(model)
        load_weights(member, checkpoint, path)
        models.append(member)
        info.append({k: checkpoint[k] for k in ("cycle", "epoch", "step")})
    result: dict[str, Any] = {"snapshots": len(files), "cycles": [i["cycle"] for i in info],
                              "epochs": [i["epoch"] for i in info], "steps": [i["step"] for i in info],
                              "last_snapshot": {}, "members": [{} for _ in files]}
    for name in ("val", "test"):
        split = getattr(splits, name)
        if split is None or not len(split):
            continue
        scores = evaluate_ensemble(models, loss_name, split, task=splits.task, num_classes=splits.num_classes)
        for key in ("loss", "acc"):
            if key in scores:
                result[f"{name}_{key}"] = scores[key]
                result["last_snapshot"][f"{name}_{key}"] = scores["members"][-1][key]
                for row, member in zip(result["members"], scores["members"], strict=True):
                    row[f"{name}_{key}"] = member[key]
    return result


def snapshot_line(scores: dict[str, Any]) -> str:
    """One line for the end of a run: the snapshot ensemble against its last snapshot.

    Example
    -------
    >>> snapshot_line({"snapshots": 3, "test_loss": 0.9, "test_acc": 0.71, "last_snapshot": {"test_loss": 1.0, "test_acc": 0.68}})
    'snapshot ensemble of 3: test accuracy 71.00% (last snapshot 68.00%), loss 0.9000 (1.0000)'
    """
    if not scores.get("snapshots"):
        return f"snapshot ensemble: {scores.get('note', 'no snapshots')}"
    last = scores["last_snapshot"]
    split = "test" if "test_loss" in scores else "val"
    if f"{split}_loss" not in scores:
        return f"snapshot ensemble of {scores['snapshots']}: no validation or test split to score it on"
    acc = (f" accuracy {scores[f'{split}_acc']:.2%} (last snapshot {last[f'{split}_acc']:.2%}),"
           if f"{split}_acc" in scores else "")
    return (f"snapshot ensemble of {scores['snapshots']}: {split}{acc} loss {scores[f'{split}_loss']:.4f} "
            f"({last[f'{split}_loss']:.4f})")
