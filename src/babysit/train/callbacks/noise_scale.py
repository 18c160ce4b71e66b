"""``noise_scale.jsonl``: the gradient noise scale B_noise, sampled during training
(``checks.noise_scale: true``; McCandlish et al. 2018, see :mod:`babysit.checks.noise_scale`).

At steps 1, 1 + every, 1 + 2 every... (the monitors' steps) the callback splits the step's
batch (``Trainer.batch``) in two halves and takes each half's gradient at the current weights
with ``torch.autograd.grad``: the two halves are the small batch, their mean the big one.
That costs about one more forward and backward of the batch per sample (``every`` = 10: about
a tenth more compute), and nothing between samples. The squared norms stay on the device
until the epoch's end, when the loop has synced anyway: no host sync in the loop at all.

Under torchrun the sample is free: the rank's own gradient is the small batch and the
all-reduced one the big batch, both recorded by a DDP communication hook in the all-reduce the
step does anyway (:class:`babysit.train.distributed.NoiseScaleHook`); this callback, on rank 0,
reads them instead of taking gradients of its own.

A line per sample: ``step``, the estimates ``g2`` (|G|^2) and ``trace_sigma`` (tr Sigma), their
bias-corrected moving averages ``g2_ema`` and ``trace_sigma_ema``, ``b_noise`` (the ratio of the
averages, never of one sample's estimates: the paper's advice), ``batch`` and ``small_batch``
(the two batch sizes), and ``samples`` (how many the averages hold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from babysit.checks.noise_scale import (
    EMA_BETA,
    RunningNoiseScale,
    half_batch_gradient_norms,
    unbiased_estimates,
)
from babysit.rundir import json_line, read_jsonl, truncate_jsonl
from babysit.train.loop import Callback, Trainer


class NoiseScaleCallback(Callback):
    """Samples B_noise every ``every`` steps into ``path`` (``noise_scale.jsonl``).

    ``population``: the training set's size: the epoch's batches are drawn from it without
    replacement, and the estimates correct for that (see
    :func:`babysit.checks.noise_scale.unbiased_estimates`); None for a stream of fresh data.
    ``hook``: set by :meth:`babysit.train.distributed.DistributedContext.attach` under torchrun
    (the norms come from the all-reduce); None in one process.
    """

    def __init__(self, path: str | Path, *, every: int, population: int | None = None, beta: float = EMA_BETA):
        self.path = Path(path)
        self.every = every
        self.population = population
        self.running = RunningNoiseScale(beta)
        self.hook: Any = None
        self._handle: Any = None
        self._pending: list[tuple[int, torch.Tensor, int, int]] = []  # (step, [|G_small|^2, |G_big|^2], B_small, B_big)
        self._one: torch.Tensor | None = None
        self.records: list[dict[str, Any]] = []  # what was written, in this process

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # resumed: drop the samples after the checkpoint and continue the averages; a run started
        # again from the beginning (no checkpoint yet) drops every sample of its first attempt
        truncate_jsonl(self.path, trainer.state.step)
        earlier = read_jsonl(self.path) if trainer.state.step > 0 else []
        if earlier:
            self.running = RunningNoiseScale.resumed(earlier[-1], self.running.beta)
        self._handle = self.path.open("a", encoding="utf-8")
        if trainer.step is not None:  # a family's own update (a GAN's two losses): no one gradient to split
            self.on_batch_end = Callback.on_batch_end.__get__(self)  # type: ignore[method-assign]

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        step = trainer.state.step
        if (step - 1) % self.every:
            return
        if self.hook is not None:  # torchrun: the all-reduce of this very step measured them
            norms, small, big = self.hook.take()
            if norms is not None:
                self._pending.append((step, norms, small, big))
            return
        if trainer.batch is None or len(trainer.batch[0]) < 2:
            return
        xb, yb = trainer.batch
        if trainer.input_noise:  # as the step saw its inputs (the noise adds to Sigma)
            xb = xb + trainer.input_noise * torch.randn_like(xb)
        scale = None
        if trainer.scaler is not None:  # fp16: the scaler's current scale, as a device tensor (no sync)
            if self._one is None:
                self._one = torch.ones((), device=xb.device)
            scale = trainer.scaler.scale(self._one)
        norms, small, big = half_batch_gradient_norms(trainer.model, trainer.loss_fn, xb, yb,
                                                      autocast=trainer.autocast, loss_scale=scale)
        self._pending.append((step, norms, small, big))

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.flush()

    def flush(self) -> None:
        """Bring the epoch's samples to the host (one transfer), average and write them."""
        if not self._pending:
            return
        values = torch.stack([norms.detach().float() for _, norms, _, _ in self._pending]).cpu().tolist()
        lines = []
        for (step, _, small, big), (small_sq, big_sq) in zip(self._pending, values, strict=True):
            g2, trace = unbiased_estimates(small_sq, big_sq, small, big, self.population)
            b_noise = self.running.update(g2, trace)
            record = {"step": step, "g2": g2, "trace_sigma": trace, "g2_ema": self.running.g2,
                      "trace_sigma_ema": self.running.trace, "b_noise": b_noise, "batch": big,
                      "small_batch": small, "samples": self.running.samples}
            self.records.append(record)
            lines.append(json_line(record) + "\n")
        self._pending.clear()
        if self._handle is not None:
            self._handle.write("".join(lines))
            self._handle.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


__all__ = ["NoiseScaleCallback"]
