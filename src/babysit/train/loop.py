"""The training loop: one readable loop with a small callback protocol.

The hot path is what a careful hand-written PyTorch loop does (forward, loss, zero_grad,
backward, step) and nothing that could be done once outside it: the batches are views of
tensors already on the device, the epoch's batch losses are kept as tensors and reduced
once at the end of the epoch (no ``.item()`` sync per step), optional work (input noise,
L1, activity penalty, clipping, max-norm, per-batch schedules, AMP) is decided once before
the loop, and callbacks that do nothing per batch are not called per batch.

A model family whose update is not "loss, backward, step" (a GAN's alternating updates)
gives the loop a ``step`` (see :class:`Step`), as Keras's ``train_step``: the loop then
calls it once per batch and logs the epoch's mean of what it returns. Without one, the loop
is the fast path above.

Callbacks are small objects with any of these hooks (see :class:`Callback`):
``on_fit_start``, ``on_epoch_start``, ``on_batch_end``, ``on_epoch_end``, ``on_fit_end``.
They read and write the :class:`Trainer` (``trainer.state``, ``trainer.model``...) and stop
the run by setting ``trainer.state.stop = True``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from babysit.data.batching import Batches
>>> x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
>>> model = nn.Linear(3, 2)
>>> trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
>>> state = trainer.fit(Batches(x, y, 16, torch.Generator().manual_seed(0)), epochs=2)
>>> state.step
8
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from babysit.data import Split
from babysit.data.batching import Batches


@dataclass
class LoopState:
    """Where the loop is; checkpointed for resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    stop: bool = False  # set by a callback to end the run after the current epoch
    stop_reason: str | None = None
    diverged: bool = False  # the explosion guard stopped the run: the current weights are bad
    logs: dict[str, float] = field(default_factory=dict)  # the last epoch's metrics
    elapsed: float = 0.0  # training wall time in seconds, summed over resumed segments

    @classmethod
    def from_checkpoint(cls, loop: dict[str, Any]) -> LoopState:
        """The state a checkpoint's ``"loop"`` entry saved (see ``Checkpointer``), to resume from."""
        return cls(epoch=loop["epoch"], step=loop["step"], stop=loop["stop"], stop_reason=loop["stop_reason"],
                   elapsed=loop["elapsed"], logs=dict(loop["logs"]))


class Callback:
    """Hooks the loop calls; override the ones you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None: ...
    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


class Step(Protocol):
    """One training update on a batch, for a family whose update is its own (the GAN).

    ``step(trainer, xb, yb)`` does the whole update (forwards, backwards, optimizer steps) and
    returns a 1-D detached tensor of figures, named by ``names``; its first figure is the loss
    the batch callbacks (the monitors' guard) see. The loop logs each figure's epoch mean.
    """

    names: tuple[str, ...]

    def __call__(self, trainer: Trainer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor: ...


def _overrides(callback: Callback, hook: str) -> bool:
    """Whether the callback does something in ``hook`` (on the instance: a callback may switch
    a hook off by binding the base class's no-op to itself)."""
    method = getattr(callback, hook)
    return getattr(method, "__func__", method) is not getattr(Callback, hook)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    split: Split,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 4096,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float]:
    """Mean loss (and accuracy when ``predict`` is given) of ``model`` on ``split`` in eval mode."""
    was_training = model.training
    model.eval()
    n = len(split)
    total_loss = torch.zeros((), device=split.x.device, dtype=torch.float64)
    correct = torch.zeros((), device=split.x.device, dtype=torch.int64)
    for start in range(0, n, batch_size):
        xb, yb = split.x[start : start + batch_size], split.y[start : start + batch_size]
        with autocast():
            out = model(xb)
            loss = loss_fn(out, yb)
        total_loss += loss.double() * len(xb)
        if predict is not None:
            correct += (predict(out) == yb).sum()
    model.train(was_training)
    result = {"loss": (total_loss / max(n, 1)).item()}
    if predict is not None:
        result["acc"] = correct.item() / max(split.y.numel(), 1)  # per token for sequence targets
    return result


class Trainer:
    """Runs epochs of mini-batch training with callbacks.

    Parameters
    ----------
    model: the network (already on its device).
    loss_fn: ``loss_fn(outputs, targets) -> scalar``.
    optimizer: a torch optimizer; LBFGS, and any optimizer with ``needs_closure = True``
        (babysit's Newton), is driven through a closure.
    schedule: an object with ``step_batch()``, ``step_epoch(val_loss)`` and ``per_batch``.
    predict: ``outputs -> class ids`` for accuracy, None for regression.
    penalty: ``model -> scalar`` added to the training loss (L1, activity...), or None.
    after_step: ``model -> None`` run after each optimizer step (max-norm), or None.
    input_noise: std of Gaussian noise added to training inputs.
    grad_clip: clip the global gradient norm to this value.
    precision: 'fp32', 'bf16' or 'fp16' (autocast; a grad scaler for fp16 on CUDA).
    compile: run the forward through ``torch.compile``.
    accuracy_every: the running training accuracy is counted on every N-th batch (a few
        small kernels on those batches only).
    step: a family's own update (:class:`Step`), or None for the standard one.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        *,
        schedule: Any | None = None,
        callbacks: Iterable[Callback] = (),
        predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
        after_step: Callable[[nn.Module], None] | None = None,
        input_noise: float = 0.0,
        grad_clip: float | None = None,
        precision: str = "fp32",
        compile: bool = False,
        accuracy_every: int = 16,
        step: Step | None = None,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.predict = predict
        self.penalty = penalty
        self.after_step = after_step
        self.input_noise = input_noise
        self.grad_clip = grad_clip
        self.accuracy_every = accuracy_every
        self.step = step
        self.state = LoopState()
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.forward = torch.compile(model) if compile else model

        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if dtype is None:
            self.autocast: Callable[[], Any] = contextlib.nullcontext
        else:
            device_type = self.device.type

            def autocast() -> Any:
                return torch.autocast(device_type=device_type, dtype=dtype)

            self.autocast = autocast
        # fp16 needs loss scaling against gradient underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" and self.device.type == "cuda" else None
        self.is_lbfgs = isinstance(optimizer, torch.optim.LBFGS) or getattr(optimizer, "needs_closure", False)
        # under torchrun: makes the epoch's training metrics global before the schedule and
        # the callbacks see them (set by babysit.train.distributed; None: one process)
        self.sync_logs: Callable[[dict[str, float]], None] | None = None

    # ------------------------------------------------------------------ one epoch

    def _stepped_epoch(self, batches: Batches) -> list[torch.Tensor]:
        """One pass with the family's own :class:`Step`; returns its figures, one row a batch."""
        step, state = self.step, self.state
        assert step is not None
        batch_hooks = [cb.on_batch_end for cb in self.callbacks if _overrides(cb, "on_batch_end")]
        rows: list[torch.Tensor] = []
        self.model.train()
        for xb, yb in batches:
            row = step(self, xb, yb)
            rows.append(row)
            state.step += 1
            for hook in batch_hooks:
                hook(self, row[0])
            if state.stop:  # the explosion guard: stop at once, not at the epoch's end
                break
        return rows

    def _train_epoch(self, batches: Batches) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """One pass over the batches. Returns the batch losses, the correct-prediction counts
        of the sampled batches and how many examples those covered (all still on the device)."""
        model, optimizer, forward = self.model, self.optimizer, self.forward
        loss_fn = self.loss_fn
        if isinstance(loss_fn, nn.Module) and not (loss_fn._forward_hooks or loss_fn._forward_pre_hooks):
            loss_fn = loss_fn.forward  # a loss module without hooks: skip Module.__call__'s bookkeeping
        penalty, after_step, autocast, scaler = self.penalty, self.after_step, self.autocast, self.scaler
        noise, clip = self.input_noise, self.grad_clip
        predict = self.predict
        every = self.accuracy_every if predict is not None else 0
        schedule_step = self.schedule.step_batch if self.schedule is not None and self.schedule.per_batch else None
        batch_hooks = [cb.on_batch_end for cb in self.callbacks if _overrides(cb, "on_batch_end")]
        losses: list[torch.Tensor] = []
        corrects: list[torch.Tensor] = []
        counted = 0
        model.train()
        plain = not (noise or self.is_lbfgs or penalty or scaler or clip or after_step or schedule_step
                     or self.autocast is not contextlib.nullcontext)
        if plain:
            # the common case, as lean as a hand-written loop: nothing optional to decide per step
            # (batch callbacks, e.g. the monitors, are one call each)
            state = self.state
            for i, (xb, yb) in enumerate(batches):
                out = forward(xb)
                loss = loss_fn(out, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss = loss.detach()
                losses.append(loss)
                if every and i % every == 0:
                    corrects.append((predict(out.detach()) == yb).sum())
                    counted += yb.numel()  # per token for sequence targets (B, T)
                # let the output's memory go back to the allocator before the next forward
                # (holding it one step longer costs about 2% on a small MLP)
                del out
                state.step += 1
                if batch_hooks:
                    for hook in batch_hooks:
                        hook(self, loss)
                    if state.stop:  # the explosion guard: stop at once, not at the epoch's end
                        break
            return losses, corrects, counted
        for i, (xb, yb) in enumerate(batches):
            if noise:
                xb = xb + noise * torch.randn_like(xb)
            if self.is_lbfgs:
                loss, out = self._lbfgs_step(xb, yb)
            else:
                with autocast():
                    out = forward(xb)
                    loss = loss_fn(out, yb)
                    objective = loss + penalty(model) if penalty is not None else loss
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(objective).backward()
                    if clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    objective.backward()
                    if clip:
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()
            if after_step is not None:
                after_step(model)
            if schedule_step is not None:
                schedule_step()
            loss = loss.detach()
            losses.append(loss)
            if every and i % every == 0:
                corrects.append((predict(out.detach()) == yb).sum())
                counted += yb.numel()  # per token for sequence targets (B, T)
            del out
            self.state.step += 1
            for hook in batch_hooks:
                hook(self, loss)
            if self.state.stop:  # the explosion guard: stop at once, not at the epoch's end
                break
        return losses, corrects, counted

    def _lbfgs_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L-BFGS re-evaluates the loss several times a step, so it takes a closure.

        ``closure(backward=False)`` returns the objective with its graph, not backpropagated:
        Newton differentiates it twice itself."""
        holder: list[torch.Tensor] = []

        def closure(backward: bool = True) -> torch.Tensor:
            if backward:
                self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                out = self.forward(xb)
                loss = self.loss_fn(out, yb)
                objective = loss + self.penalty(self.model) if self.penalty is not None else loss
            if not holder:
                holder.extend((loss.detach(), out.detach()))
            if not backward:
                return objective
            objective.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            return objective

        self.optimizer.step(closure)
        return holder[0], holder[1]

    # ------------------------------------------------------------------ the run

    def fit(
        self,
        train: Batches,
        epochs: int,
        val: Split | None = None,
        state: LoopState | None = None,
    ) -> LoopState:
        """Train until ``epochs`` epochs are complete (counting those in a resumed ``state``)
        or a callback stops the run. Returns the final :class:`LoopState`."""
        if state is not None:
            self.state = state
        for cb in self.callbacks:
            cb.on_fit_start(self)
        started = time.perf_counter() - self.state.elapsed
        while self.state.epoch < epochs and not self.state.stop:
            for cb in self.callbacks:
                cb.on_epoch_start(self)
            if self.step is None:
                losses, corrects, counted = self._train_epoch(train)
            else:
                rows, corrects, counted = self._stepped_epoch(train), [], 0
            self.state.epoch += 1
            logs: dict[str, float] = {
                "epoch": self.state.epoch,
                "step": self.state.step,
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            # the training metrics are running figures over the epoch (dropout on, weights
            # moving), as Keras reports them; validation is measured in eval mode at the end
            if self.step is not None:
                if rows:
                    logs.update(zip(self.step.names, torch.stack(rows).float().mean(0).tolist(), strict=True))
            elif losses:
                logs["train_loss"] = torch.stack(losses).float().mean().item()
            if counted:
                logs["train_acc"] = torch.stack(corrects).sum().item() / counted
            if self.sync_logs is not None:
                self.sync_logs(logs)
            if val is not None and len(val):
                for key, value in evaluate(self.model, self.loss_fn, val, self.predict, autocast=self.autocast).items():
                    logs[f"val_{key}"] = value
            if self.schedule is not None:
                self.schedule.step_epoch(logs.get("val_loss", logs.get("train_loss")))
            self.state.elapsed = time.perf_counter() - started
            logs["time"] = self.state.elapsed
            self.state.logs = logs
            for cb in self.callbacks:
                cb.on_epoch_end(self, logs)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.state
