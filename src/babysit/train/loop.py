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
``on_fit_start``, ``on_epoch_start``, ``on_batch_end``, ``on_epoch_end``, ``on_fit_end``
(and ``on_rollback``, after a rollback). They read and write the :class:`Trainer`
(``trainer.state``, ``trainer.model``...) and stop the run by setting ``trainer.state.stop = True``.

Loss spikes (``on_spike``, see :mod:`babysit.checks.spikes`): a batch loss far above its
moving average is a spike. The default, ``stop``, only reports them: the epoch's losses
come to the host at its end in the one transfer that gives its mean, and are checked there
(nothing per step; the monitors' explosion guard stops a diverging run as before).
``rollback`` checks them in windows of ``spike_every`` steps, ending at the steps the
monitors sample (one transfer of the window's losses each, where the monitors already wait
for the device): the window's start state is kept in memory
(:class:`~babysit.train.rollback.TrainingSnapshot`), and a window with a spike at step s
goes back to it, replays the window's clean batches before s and skips the batches from s
to the window's end. ``skip`` must know before the update, so it brings each step's loss to
the host (one device sync a step: free on the CPU, the pipelining of a GPU lost) and skips
the update of a spiked batch. Both take the general path below, never the plain one. Spike
and rollback records gather in :attr:`Trainer.events` (``metrics.jsonl`` gets them); a
non-finite loss is replayed with a hook on every module (:func:`babysit.checks.spikes.nonfinite_origin`)
at the weights the bad step started from, to say where it came from.

Augmentation (``augment``, :mod:`babysit.data.augment`) transforms each training batch on its
device before the step, with randomness from the global step (a resumed run draws what the
uninterrupted one drew); it takes the general path. The input wait (``input_wait_every``): at
the steps the monitors sample, two clock readings around the fetch of the batch and one at the
step's end (no device sync); each epoch's record gets ``input_wait``, the fraction of those
steps' time spent waiting for data (:mod:`babysit.checks.input_bound` judges it).

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
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from babysit.checks.spikes import MAX_EXAMPLES, SPIKES_IN_A_ROW, SpikeDetector, nonfinite_origin
from babysit.data import Split, in_order
from babysit.data.batching import Batches
from babysit.train.rollback import TrainingSnapshot


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
    # after a rollback (``on_spike: rollback``): the weights and optimizer went back to the
    # window's start; ``record`` is the rollback's record (see Trainer.events)
    def on_rollback(self, trainer: Trainer, record: dict[str, Any]) -> None: ...


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
    for xb, yb in in_order(split, batch_size):  # slices in memory; read by the DataLoader when streamed
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
    on_spike: 'stop' (report loss spikes only), 'skip' (skip a spiked batch's update: one
        host sync a step) or 'rollback' (go back to the last window's start and skip the
        batches from the spike on); see the module's docstring.
    spike_factor: a spike is a loss above this multiple of its moving average (and above the
        batch losses' spread, :class:`~babysit.checks.spikes.SpikeDetector`); None: no spike
        detection (a family whose loss is not one being minimised: the GAN's).
    spike_every: the window of ``rollback``, in steps (``checks.every``: the monitors' samples).
    augment: ``augment(xb, step) -> xb`` applied to each training batch before its step
        (:func:`babysit.data.augment.augmenter`), or None.
    input_wait_every: time the wait for the batch and the whole step at every N-th step
        (``checks.every``: where the monitors sample); each epoch's logs get ``input_wait``
        and ``input_wait_samples``. None: no timing.
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
        on_spike: str = "stop",
        spike_factor: float | None = 3.0,
        spike_every: int = 10,
        augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        input_wait_every: int | None = None,
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
        if augment is not None and step is not None:
            raise ValueError("Trainer: augment applies to the standard update; a family's own step augments "
                             "its batches itself")
        self.augment = augment
        self.input_wait_every = max(int(input_wait_every), 1) if input_wait_every else None
        # this epoch's sampled steps: seconds waiting for the batch, seconds in all, how many
        self._input_wait = [0.0, 0.0, 0]
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
        # (torch's GradScaler runs on the CPU too, where fp16 autocast is what a user checks a GPU run with.)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        self.skipped_steps = 0  # fp16: steps the scaler skipped this epoch (their gradients overflowed)
        self.is_lbfgs = isinstance(optimizer, torch.optim.LBFGS) or getattr(optimizer, "needs_closure", False)
        # under torchrun: makes the epoch's training metrics global before the schedule and
        # the callbacks see them (set by babysit.train.distributed; None: one process)
        self.sync_logs: Callable[[dict[str, float]], None] | None = None
        # the (inputs, targets) of the step being taken: batch callbacks (the opt-in checks) read it
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None

        if on_spike not in ("stop", "skip", "rollback"):
            raise ValueError(f"Trainer: on_spike must be stop, skip or rollback, got {on_spike!r}")
        if on_spike != "stop" and (spike_factor is None or step is not None):
            raise ValueError(f"Trainer: on_spike={on_spike!r} needs spike detection and the standard update "
                             "(loss, backward, step)")
        if on_spike == "skip" and self.is_lbfgs:
            raise ValueError("Trainer: on_spike='skip' decides before the update, which an optimizer driven by a "
                             "closure (L-BFGS, Newton) takes in one call; use 'rollback'")
        self.on_spike = on_spike
        self.spike_every = max(int(spike_every), 1)
        self.spike_detector = SpikeDetector(spike_factor) if spike_factor is not None else None
        # spike and rollback records, in the order they happened (MetricsLogger writes them to metrics.jsonl)
        self.events: list[dict[str, Any]] = []
        # the current step's loss is a spike that skip / rollback undid (the explosion guard lets it pass)
        self.spike_handled = False
        self._snapshot = (TrainingSnapshot(model, optimizer, schedule, self.scaler)
                          if on_spike == "rollback" else None)
        self._spikes_in_a_row = 0  # skipped steps / rolled-back windows since the last clean one
        # the first non-finite loss's record and its batch's example indices (all of them), for a
        # replay after the run (babysit.run: the explosion guard's nonfinite_loss says where it came from)
        self.nonfinite_batch: tuple[dict[str, Any], torch.Tensor] | None = None

    # ------------------------------------------------------------------ one epoch

    def _stepped_epoch(self, batches: Batches) -> list[torch.Tensor]:
        """One pass with the family's own :class:`Step`; returns its figures, one row a batch."""
        step, state = self.step, self.state
        assert step is not None
        batch_hooks = [cb.on_batch_end for cb in self.callbacks if _overrides(cb, "on_batch_end")]
        rows: list[torch.Tensor] = []
        self.model.train()
        for batch in self._fetch(batches):
            self.batch = batch
            xb, yb = batch
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
                     or self.autocast is not contextlib.nullcontext or self.on_spike != "stop"
                     or self.augment is not None)
        if plain:
            # the common case, as lean as a hand-written loop: nothing optional to decide per step
            # (batch callbacks, e.g. the monitors, are one call each)
            state = self.state
            for i, batch in enumerate(self._fetch(batches)):
                self.batch = batch
                xb, yb = batch
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
        skip, rollback = self.on_spike == "skip", self._snapshot is not None
        # rollback: (batch index, batch, len(corrects), counted) of each step since the snapshot
        window: list[tuple[int, tuple[torch.Tensor, torch.Tensor], int, int]] = []
        if rollback:
            self._snapshot.save(skipped_steps=self.skipped_steps)

        def update(xb: torch.Tensor, yb: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            """One training step on a batch: its detached loss and its output (None when
            ``skip`` found the loss a spike and left the weights as they were)."""
            if noise:
                xb = xb + noise * torch.randn_like(xb)
            if self.is_lbfgs:
                loss, out = self._lbfgs_step(xb, yb)
            else:
                with autocast():
                    out = forward(xb)
                    loss = loss_fn(out, yb)
                    objective = loss + penalty(model) if penalty is not None else loss
                if skip and self._skip_spike(loss.detach(), (xb, yb), batches, i):
                    return loss.detach(), None
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(objective).backward()
                    if clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    scaler.step(optimizer)
                    scale = scaler.get_scale()  # scaler.step already waited for the device: no extra sync
                    scaler.update()
                    # the scale backs off exactly when this step found inf / NaN gradients and was skipped
                    self.skipped_steps += scaler.get_scale() < scale
                else:
                    objective.backward()
                    if clip:
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()
            if after_step is not None:
                after_step(model)
            if schedule_step is not None:
                schedule_step()
            return loss.detach(), out

        state, augment = self.state, self.augment
        for i, batch in enumerate(self._fetch(batches)):
            if augment is not None:  # seeded by the global step: a replayed or resumed step draws the same
                batch = (augment(batch[0], state.step), batch[1])
            self.batch = batch
            if rollback:
                window.append((i, batch, len(corrects), counted))
            loss, out = update(*batch, i)
            if out is not None:  # (skip: a spiked batch's loss stays out of the epoch's figures)
                losses.append(loss)
                if every and i % every == 0:
                    yb = batch[1]
                    corrects.append((predict(out.detach()) == yb).sum())
                    counted += yb.numel()  # per token for sequence targets (B, T)
                del out
            state.step += 1
            # rollback: a window ends where the monitors sample (their wait for the device pays for its transfer)
            closes = rollback and (state.step - 1) % self.spike_every == 0
            spiked = self._find_spike(window, losses) if closes else None
            self.spike_handled = self.spike_handled or spiked is not None
            for hook in batch_hooks:
                hook(self, loss)
            self.spike_handled = False
            if closes:
                if spiked is not None:
                    counted = self._roll_back(window, spiked, losses, corrects, batches, update)
                else:
                    self._spikes_in_a_row = 0
                self._snapshot.save(skipped_steps=self.skipped_steps)
                window.clear()
            if state.stop:  # the explosion guard: stop at once, not at the epoch's end
                break
        if window and not state.diverged:  # the epoch's last window, before a checkpoint can see its end
            spiked = self._find_spike(window, losses)
            if spiked is not None:
                counted = self._roll_back(window, spiked, losses, corrects, batches, update)
        return losses, corrects, counted

    # ------------------------------------------------------------------ the input wait

    def _fetch(self, batches: Iterable[Any]) -> Iterable[Any]:
        """``batches``, timed at every ``input_wait_every``-th step (the monitors' steps, 0-based
        ``state.step % every == 0``): the wait for the batch and the whole step, from before the
        fetch to the loop asking for the next batch (the step's callbacks included). Other steps
        only pass through. No timing asked: ``batches`` itself."""
        every = self.input_wait_every
        if every is None:
            return batches
        return self._timed(batches, every)

    def _timed(self, batches: Iterable[Any], every: int) -> Any:
        state, clock, totals = self.state, time.perf_counter, self._input_wait
        start = clock() if state.step % every == 0 else None
        for batch in batches:
            if start is None:
                yield batch
            else:
                fetched = clock()
                yield batch
                totals[0] += fetched - start
                totals[1] += clock() - start
                totals[2] += 1
            start = clock() if state.step % every == 0 else None

    # ------------------------------------------------------------------ loss spikes

    def _spike_record(self, step: int, value: float, average: float, threshold: float, action: str,
                      batches: Any, index: int) -> dict[str, Any]:
        """A ``loss_spike`` record (a line of metrics.jsonl: no ``epoch`` key, so that the readers
        of epoch records pass it by), with the examples of the batch when ``batches`` can name them."""
        record: dict[str, Any] = {"event": "loss_spike", "step": step, "loss": value, "average": average,
                                  "threshold": threshold, "action": action}
        batch_indices = getattr(batches, "batch_indices", None)
        if batch_indices is not None:
            chosen = batch_indices(index)
            record["batch_size"] = len(chosen)
            record["examples"] = chosen[:MAX_EXAMPLES].tolist()
            if not math.isfinite(value) and self.nonfinite_batch is None:
                self.nonfinite_batch = (record, chosen)
        return record

    def _report_spikes(self, values: list[float], first_step: int, batches: Any) -> None:
        """``stop``: the epoch's losses (on the host at the epoch's end) through the detector;
        a run of consecutive spiked steps is one record (``steps``, ``peak``)."""
        detector = self.spike_detector
        assert detector is not None
        current: dict[str, Any] | None = None
        for j, value in enumerate(values):
            threshold = detector.threshold
            spike = detector.is_spike(value, threshold)
            if spike and current is None:
                average = detector.average
            detector.fold(value, threshold)
            if not spike:
                current = None
            elif current is not None:
                current["steps"] += 1
                if not math.isfinite(value) or value > current["peak"]:
                    current["peak"] = value
            else:
                current = self._spike_record(first_step + j, value, average, threshold, "none", batches, j)
                current.update(steps=1, peak=value)
                self.events.append(current)

    def _skip_spike(self, loss: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor], batches: Any,
                    index: int) -> bool:
        """``skip``: whether this step's loss is a spike (then it is recorded, and the update is
        not taken). Reads the loss on the host: the one device sync a step that ``skip`` costs."""
        detector = self.spike_detector
        assert detector is not None
        value = loss.item()
        average, threshold = detector.average, detector.threshold
        if not detector.is_spike(value):
            detector.fold(value)
            self._spikes_in_a_row = 0
            return False
        record = self._spike_record(self.state.step + 1, value, average, threshold, "skip", batches, index)
        if not math.isfinite(value):  # the weights are still those the bad step started from
            with self.autocast():
                record["origin"] = nonfinite_origin(self.model, self.loss_fn, batch)
        self.optimizer.zero_grad(set_to_none=True)  # no callback reads an older step's gradient as this one's
        self.events.append(record)
        self.spike_handled = True
        self._spikes_in_a_row += 1
        if self._spikes_in_a_row >= SPIKES_IN_A_ROW * self.spike_every:
            self._stop_for_spikes(record, f"{self._spikes_in_a_row} batches in a row")
        return True

    def _find_spike(self, window: list[Any], losses: list[torch.Tensor]) -> tuple[int, float, float, float] | None:
        """``rollback``: the window's losses in one transfer, through the detector; the first
        spike as (position in the window, loss, average, threshold), or None. Losses after a
        spike are not folded into the average (they are about to be undone)."""
        detector = self.spike_detector
        assert detector is not None
        values = torch.stack(losses[len(losses) - len(window):]).float().tolist()
        for k, value in enumerate(values):
            average, threshold = detector.average, detector.threshold
            if detector.is_spike(value):
                return k, value, average, threshold
            detector.fold(value)
        return None

    def _roll_back(self, window: list[Any], spiked: tuple[int, float, float, float], losses: list[torch.Tensor],
                   corrects: list[torch.Tensor], batches: Any, update: Callable[..., Any]) -> int:
        """Back to the window's start, replay its batches before the spike, skip the rest; the
        epoch's figures lose the undone steps. Returns the accuracy count to go on from."""
        assert self._snapshot is not None
        k, value, average, threshold = spiked
        state = self.state
        first = state.step - len(window) + 1  # the window's first step
        index, batch, kept_corrects, counted = window[k]
        record = self._spike_record(first + k, value, average, threshold, "rollback", batches, index)
        self._snapshot.restore()
        self.skipped_steps = self._snapshot.extra["skipped_steps"]
        for j, clean, _, _ in window[:k]:  # the same RNG draws as the first time: the same steps
            update(*clean, j)
        if not math.isfinite(value):  # now at the weights the bad step started from
            with self.autocast():
                record["origin"] = nonfinite_origin(self.model, self.loss_fn, batch)
        del losses[len(losses) - len(window) + k:]
        del corrects[kept_corrects:]
        rolled = {"event": "rollback", "step": state.step, "to_step": first - 1, "replayed": k,
                  "skipped": len(window) - k, "first_skipped": first + k}
        self.events += [record, rolled]
        self._spikes_in_a_row += 1
        if self._spikes_in_a_row >= SPIKES_IN_A_ROW:
            self._stop_for_spikes(record, f"{self._spikes_in_a_row} windows in a row")
        for callback in self.callbacks:
            if _overrides(callback, "on_rollback"):
                callback.on_rollback(self, rolled)
        return counted

    def _stop_for_spikes(self, record: dict[str, Any], how: str) -> None:
        """Spikes came again and again: the loss moved to a new level; undoing every batch would
        train nothing. The weights are good (every spike was undone): not diverged."""
        record["stopped"] = True
        self.state.stop = True
        self.state.stop_reason = (f"loss_spike: the loss spiked in {how} (last at step {record['step']}, "
                                  f"train.on_spike: {self.on_spike}); it moved to a new level")

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
                stacked = torch.stack(losses).float()
                if self.on_spike == "stop" and self.spike_detector is not None:
                    # every loss of the epoch in the one transfer that brings its mean
                    values = torch.cat([stacked.mean().reshape(1), stacked]).tolist()
                    logs["train_loss"] = values[0]
                    self._report_spikes(values[1:], self.state.step - len(losses) + 1, train)
                else:
                    logs["train_loss"] = stacked.mean().item()
            if counted:
                logs["train_acc"] = torch.stack(corrects).sum().item() / counted
            waited, took, samples = self._input_wait
            if samples and took > 0:  # the fraction of the sampled steps' time spent waiting for data
                logs["input_wait"] = waited / took
                logs["input_wait_samples"] = samples
            self._input_wait[:] = [0.0, 0.0, 0]
            if self.scaler is not None:  # fp16: what the loss scaling did this epoch (metrics.jsonl)
                logs["grad_scale"] = self.scaler.get_scale()
                logs["skipped_steps"] = self.skipped_steps
                self.skipped_steps = 0
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
