"""Learning-rate schedules from the spec, composed from ``torch.optim.lr_scheduler``.

Every schedule counts optimizer steps (batches), except ``plateau``, which looks at the
validation loss once an epoch. ``t`` below is the number of optimizer steps taken, ``T``
the total (``epochs * steps_per_epoch``), ``W`` the warm-up steps, ``lr`` the optimizer's lr.

- ``constant``: ``lr``.
- ``step``: ``lr * gamma ** floor(t / (step_size * steps_per_epoch))`` (``StepLR``).
- ``plateau``: multiply by ``factor`` after ``patience`` epochs without a better
  validation loss, never below ``min_lr`` (``ReduceLROnPlateau``).
- ``warmup_cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2``
  (``CosineAnnealingLR``; Loshchilov & Hutter 2017 without restarts).
- ``cyclic``: triangular cycles between ``base_lr`` (default ``lr / 10``) and ``lr``, one
  cycle every ``cycle_epochs`` epochs (Smith 2017, ``CyclicLR``).
- ``cosine_restarts``: SGDR (Loshchilov & Hutter 2017), cosine from ``lr`` to ``min_lr``
  over ``cycle_epochs`` epochs, then restart, each period ``cycle_mult`` times longer
  (``CosineAnnealingWarmRestarts``).
- ``one_cycle``: Smith & Topin (2019), ``lr / 25`` up to ``lr`` over the first 30 % of
  the steps, then cosine down to ``lr / 25e4`` (``OneCycleLR``).

``cyclic`` and ``one_cycle`` also cycle momentum inversely to the lr (Smith 2018) when the
optimizer has a momentum term (SGD momentum > 0, or Adam's beta1), between the configured
momentum ``m`` (at the lowest lr) and ``m - 0.1`` (at the highest lr).

Warm-up (``warmup_steps = W > 0``, Goyal et al. 2017): the lr rises linearly from
``lr / 100`` to ``lr`` over the first ``W`` steps (``LinearLR``), then the main schedule
runs over the remaining ``T - W`` steps (``SequentialLR``). With ``plateau`` the warm-up
runs per batch and the plateau watch starts once it is over.

Example
-------
>>> import torch
>>> from babysit.config import ScheduleSpec
>>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
>>> schedule = build_schedule(ScheduleSpec(name="step", step_size=1, gamma=0.5), opt, steps_per_epoch=2, epochs=3)
>>> lrs = []
>>> for _ in range(4):
...     opt.step(); schedule.step_batch(); lrs.append(opt.param_groups[0]["lr"])
>>> lrs
[0.1, 0.05, 0.05, 0.025]
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler

from babysit.config import ScheduleSpec
from babysit.errors import BabysitError

WARMUP_START_FACTOR = 0.01  # warm-up starts at lr / 100
MOMENTUM_SWING = 0.1  # cyclic / one_cycle momentum range: [m - 0.1, m]


class Schedule:
    """Learning-rate schedule over training steps composed from torch.optim.lr_scheduler.

    The loop calls ``step_batch()`` after every optimizer step and ``step_epoch(val_loss)``
    after every epoch.

    Parameters
    ----------
    batch_scheduler: stepped after every optimizer step, or None.
    epoch_scheduler: a ``ReduceLROnPlateau`` stepped with the validation loss, or None.
    batch_steps: step ``batch_scheduler`` only this many times (``T - 1``: the lr of the
        run's last step is set by then; or the warm-up before a plateau schedule); None for
        always. Past it the lr stays where it is (``OneCycleLR`` would raise, and
        ``CosineAnnealingLR`` turn back up, past the planned run).
    warmup_steps: ``epoch_scheduler`` ignores epochs that end before this many steps.

    Example
    -------
    >>> import torch
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    >>> schedule = Schedule(opt, batch_scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    >>> opt.step(); schedule.step_batch(); opt.param_groups[0]["lr"]
    0.5
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        batch_scheduler: lr_scheduler.LRScheduler | None = None,
        epoch_scheduler: lr_scheduler.ReduceLROnPlateau | None = None,
        batch_steps: int | None = None,
        warmup_steps: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.batch_scheduler = batch_scheduler
        self.epoch_scheduler = epoch_scheduler
        self.batch_steps = batch_steps
        self.warmup_steps = warmup_steps
        self.batches = 0  # optimizer steps seen

    @property
    def per_batch(self) -> bool:
        """False when ``step_batch`` would do nothing, so the loop can skip calling it."""
        return self.batch_scheduler is not None

    def step_batch(self) -> None:
        self.batches += 1
        if self.batch_scheduler is not None and (self.batch_steps is None or self.batches <= self.batch_steps):
            self.batch_scheduler.step()

    def step_epoch(self, val_loss: float | None) -> None:
        """Let ``plateau`` see this epoch's validation loss; None (no validation set) is ignored."""
        if self.epoch_scheduler is None or val_loss is None:
            return
        if self.batches < self.warmup_steps:
            return  # still warming up: the lr is not at its plateau value yet
        self.epoch_scheduler.step(float(val_loss))

    def state_dict(self) -> dict[str, Any]:
        """Plain data (numbers, strings, lists, dicts) that ``torch.load(weights_only=True)`` accepts."""
        return {
            "batches": self.batches,
            "batch_scheduler": self.batch_scheduler.state_dict() if self.batch_scheduler is not None else None,
            "epoch_scheduler": self.epoch_scheduler.state_dict() if self.epoch_scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved schedule; load the optimizer's state first (it holds the current lr)."""
        self.batches = int(state["batches"])
        for name in ("batch_scheduler", "epoch_scheduler"):
            scheduler, saved = getattr(self, name), state.get(name)
            if (scheduler is None) != (saved is None):
                raise ValueError(f"schedule state: {name} saved as {saved is not None}, built as {scheduler is not None}")
            if scheduler is not None:
                scheduler.load_state_dict(saved)

    def __repr__(self) -> str:
        parts = [type(s).__name__ for s in (self.batch_scheduler, self.epoch_scheduler) if s is not None]
        return f"Schedule({', '.join(parts) or 'constant'})"


def _momentum(optimizer: torch.optim.Optimizer) -> float | None:
    """The optimizer's momentum term (SGD momentum, or Adam's beta1), or None when it has none."""
    group = optimizer.param_groups[0]
    if group.get("momentum", 0) > 0:
        return float(group["momentum"])
    if "betas" in group and group["betas"][0] > 0:
        return float(group["betas"][0])
    return None


def _momentum_cycle(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """CyclicLR / OneCycleLR momentum arguments: cycle only when there is a momentum to cycle."""
    m = _momentum(optimizer)
    if m is None:
        return {"cycle_momentum": False}
    return {"cycle_momentum": True, "max_momentum": m, "base_momentum": max(0.0, m - MOMENTUM_SWING)}


def _main_scheduler(
    spec: ScheduleSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int, steps: int
) -> lr_scheduler.LRScheduler | None:
    """The schedule after warm-up, over ``steps`` optimizer steps; None for constant and plateau."""
    lrs = [group["lr"] for group in optimizer.param_groups]
    name = spec.name
    if name in ("warmup_cosine", "cosine_restarts") and any(spec.min_lr >= lr for lr in lrs):
        raise BabysitError(f"schedule.min_lr: must be below optimizer.lr ({lrs[0]}) for {name}, got {spec.min_lr}")
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=spec.step_size * steps_per_epoch, gamma=spec.gamma)
    if name == "warmup_cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=spec.min_lr)
    if name == "cosine_restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=spec.cycle_epochs * steps_per_epoch, T_mult=spec.cycle_mult, eta_min=spec.min_lr
        )
    if name == "cyclic":
        base_lrs = [spec.base_lr if spec.base_lr is not None else lr / 10 for lr in lrs]
        if any(b >= lr for b, lr in zip(base_lrs, lrs, strict=True)):
            raise BabysitError(f"schedule.base_lr: must be below optimizer.lr ({lrs[0]}), got {spec.base_lr}")
        cycle = spec.cycle_epochs * steps_per_epoch
        up = max(1, cycle // 2)  # half a cycle rising, the rest falling
        return lr_scheduler.CyclicLR(
            optimizer, base_lr=base_lrs, max_lr=lrs, step_size_up=up, step_size_down=max(1, cycle - up),
            mode="triangular", **_momentum_cycle(optimizer),
        )
    if name == "one_cycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=steps, **_momentum_cycle(optimizer))
    return None  # constant, plateau


def build_schedule(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> Schedule:
    """The :class:`Schedule` ``spec`` describes, for a run of ``epochs * steps_per_epoch`` optimizer steps.

    The schedule starts from the optimizer's current lr, which it sets for step 0.

    Example
    -------
    >>> import torch
    >>> from babysit.config import ScheduleSpec
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    >>> schedule = build_schedule(ScheduleSpec(name="warmup_cosine", warmup_steps=10), opt, steps_per_epoch=10, epochs=5)
    >>> round(opt.param_groups[0]["lr"], 6), schedule.per_batch  # warm-up starts at lr / 100
    (0.001, True)
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"build_schedule: steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, {epochs}")
    total = steps_per_epoch * epochs
    warmup = spec.warmup_steps
    if warmup and warmup >= total:
        raise BabysitError(
            f"schedule.warmup_steps: must be less than the run's {total} optimizer steps "
            f"({epochs} epochs x {steps_per_epoch} batches), got {warmup}"
        )
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        # Start from the lr the optimizer has now, not one a previous schedule left behind.
        # (Popped rather than set: CyclicLR steps from initial_lr while it is constructed.)
        group.pop("initial_lr", None)

    plateau = None
    if spec.name == "plateau":
        plateau = lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=spec.factor, patience=spec.patience, min_lr=spec.min_lr
        )
    main = _main_scheduler(spec, optimizer, steps_per_epoch, total - warmup)
    if not warmup:
        return Schedule(optimizer, batch_scheduler=main, epoch_scheduler=plateau, batch_steps=total - 1)

    if main is None:  # constant or plateau: warm up, then leave the lr alone per batch
        warm = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup)
        return Schedule(optimizer, batch_scheduler=warm, epoch_scheduler=plateau, batch_steps=warmup, warmup_steps=warmup)

    # SequentialLR resets every group's lr to group["initial_lr"] before warming up, but
    # CyclicLR and OneCycleLR have just moved the lr (and OneCycleLR initial_lr, which it
    # reads back later) to their own starting values. So the warm-up is built on the real lr
    # and the main schedule's initial_lr is put back once SequentialLR is set up.
    main_initial = [group["initial_lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = group["initial_lr"] = lr
    warm = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup)
    chained = lr_scheduler.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warmup])
    for group, initial in zip(optimizer.param_groups, main_initial, strict=True):
        group["initial_lr"] = initial
    return Schedule(optimizer, batch_scheduler=chained, batch_steps=total - 1)
