"""The gradient noise scale and the critical batch size (McCandlish, Kaplan, Amodei et al. 2018,
"An empirical model of large-batch training", arXiv 1812.06162).

With per-example gradients of mean G and covariance Sigma, a batch of B examples gives a
gradient whose expected squared norm is ``|G|^2 + tr(Sigma) / B``. The paper's *simple noise
scale* ``B_noise = tr(Sigma) / |G|^2`` is the batch at which the noise in a batch gradient is as
large as the signal, and it predicts the critical batch size: with batch B a run needs about
``S = S_min (1 + B_noise / B)`` steps and ``E = E_min (1 + B / B_noise)`` examples. Far below
B_noise, doubling the batch nearly halves the steps (free speed on parallel hardware); far
above it, each extra example in a batch buys almost nothing (wasted compute).

Estimate (the paper's appendix A): the squared norms of the gradients of a small batch and
of a big batch, ``|G_small|^2`` and ``|G_big|^2``, give unbiased estimates

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each is noisy and the ratio of two noisy numbers is badly biased, so the paper averages each
over many steps first and divides only after: :class:`RunningNoiseScale` keeps an exponential
moving average of each and gives their ratio. babysit's small batches are the two halves of the
step's batch (:func:`half_batch_gradient_norms`); under torchrun, a rank's gradient and the
all-reduced one (babysit.train.distributed).

B_noise grows as the loss falls (the paper finds it rising by an order of magnitude or more
over training), so the findings judge the later part of a run: :func:`noise_scale_findings`.

Example
-------
>>> g2, trace = unbiased_estimates(small_sq=3.0, big_sq=2.0, small_batch=32, big_batch=64)
>>> round(g2, 6), round(trace, 6)
(1.0, 64.0)
>>> noise_scale(trace, g2)
64.0
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from babysit.checks.findings import Finding

REFERENCE = "McCandlish et al. 2018, arXiv 1812.06162"
# The EMA of each estimate: a window of about 1 / (1 - beta) = 20 samples, bias-corrected as
# Adam's moments are (so the first samples are their plain mean, not pulled toward 0). One
# two-halves sample is noisy: on the closed-form linear regression of tests/test_noise_scale.py
# (B_noise 41-201, batches of 64-256) |G|^2 and tr(Sigma) spread by 15-50% a sample; after 60
# samples (B_noise 101, batches of 256) the EMA's B_noise is within 7% of the truth on 10 seeds
# out of 10 (sd 4%).
EMA_BETA = 0.95
# The findings: a batch a factor 10 or more off B_noise. There the paper's model puts the run
# at 11 S_min steps (B = B_noise / 10) or 11 E_min examples (B = 10 B_noise): doubling the
# batch would cut the steps by 45% in the first case, halving it the examples by 45% in the
# second (S = S_min (1 + B_noise / B), E = E_min (1 + B / B_noise), McCandlish et al. 2018).
FACTOR = 10.0
# ... judged over the later half of the run's samples, since B_noise grows as the loss falls (as
# the paper finds; babysit's MNIST-1D MLP at batch 128 over 40 epochs: from about 300 early to
# 1100-1400 in the second half, no finding), and only with enough samples there to average
LATER_FRACTION = 0.5
MIN_SAMPLES = 5


def unbiased_estimates(small_sq: float, big_sq: float, small_batch: int, big_batch: int,
                       population: int | None = None) -> tuple[float, float]:
    """(|G|^2, tr Sigma) from the squared gradient norms of a batch of ``small_batch`` and one
    of ``big_batch`` examples (McCandlish et al. 2018, appendix A). Either may be negative
    for one sample (noise); their averages over samples are unbiased.

    ``population``: the batches are drawn without replacement from a training set of this many
    examples (as every epoch's batches are), whose mean gradient G and covariance Sigma (over
    its examples) are wanted. Then ``E|G_B|^2 = |G|^2 + tr(Sigma) / B * (N - B) / (N - 1)``
    (the finite-population correction), and solving the two equations gives tr(Sigma) the
    factor (N - 1) / N and |G|^2 the term tr(Sigma) / (N - 1). The paper's i.i.d. formulas
    (``population`` None) would read |G|^2 low by that term: B_noise high by the factor
    1 / (1 - B_noise / N), which matters once B_noise nears the training set.

    Example
    -------
    >>> unbiased_estimates(2.0, 1.5, 16, 32)
    (1.0, 16.0)
    >>> [round(v, 4) for v in unbiased_estimates(2.0, 1.5, 16, 32, population=1001)]
    [1.016, 15.984]
    """
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small_batch < big_batch, got {small_batch} and {big_batch}")
    g2 = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace = (small_sq - big_sq) / (1 / small_batch - 1 / big_batch)
    if population is not None and population >= big_batch:
        trace = trace * (population - 1) / population
        g2 = g2 + trace / (population - 1)
    return g2, trace


def noise_scale(trace: float, g2: float) -> float:
    """B_simple = tr(Sigma) / |G|^2; infinite when |G|^2 is not positive (the noise drowns the
    gradient: no batch is too big), NaN when tr(Sigma) is not positive either.

    Example
    -------
    >>> noise_scale(100.0, 2.0), noise_scale(5.0, -1.0)
    (50.0, inf)
    """
    if not (math.isfinite(trace) and math.isfinite(g2)):
        return math.nan
    if g2 > 0:
        return trace / g2 if trace > 0 else math.nan
    return math.inf if trace > 0 else math.nan


class RunningNoiseScale:
    """Bias-corrected exponential moving averages of the |G|^2 and tr(Sigma) estimates, and
    B_noise as their ratio (the paper's advice: average first, divide after). Non-finite
    samples (an fp16 overflow) are skipped.

    Example
    -------
    >>> ema = RunningNoiseScale(beta=0.5)
    >>> ema.update(1.0, 10.0), round(ema.update(3.0, 10.0), 4)
    (10.0, 4.2857)
    >>> round(ema.g2, 4), ema.samples
    (2.3333, 2)
    """

    def __init__(self, beta: float = EMA_BETA, *, g2: float = 0.0, trace: float = 0.0, samples: int = 0):
        self.beta = beta
        self._g2, self._trace, self.samples = g2, trace, samples  # the raw (not bias-corrected) averages

    @classmethod
    def resumed(cls, record: dict[str, Any], beta: float = EMA_BETA) -> RunningNoiseScale:
        """The averages a ``noise_scale.jsonl`` record left (to continue a resumed run)."""
        samples = int(record.get("samples") or 0)
        correction = 1 - beta**samples
        g2, trace = record.get("g2_ema"), record.get("trace_sigma_ema")
        if not samples or g2 is None or trace is None:
            return cls(beta)
        return cls(beta, g2=g2 * correction, trace=trace * correction, samples=samples)

    def update(self, g2: float, trace: float) -> float:
        """Add one sample's estimates; returns B_noise of the averages."""
        if math.isfinite(g2) and math.isfinite(trace):
            self._g2 = self.beta * self._g2 + (1 - self.beta) * g2
            self._trace = self.beta * self._trace + (1 - self.beta) * trace
            self.samples += 1
        return self.b_noise

    @property
    def g2(self) -> float:
        return self._g2 / (1 - self.beta**self.samples) if self.samples else math.nan

    @property
    def trace(self) -> float:
        return self._trace / (1 - self.beta**self.samples) if self.samples else math.nan

    @property
    def b_noise(self) -> float:
        return noise_scale(self.trace, self.g2)


# --------------------------------------------------------------------------- the gradients


def _squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The squared norm of the tensors as one vector, in fp32 (PyTorch's foreach norms, as
    gradient clipping takes them)."""
    return nn.utils.get_total_norm(tensors).float().square()


def half_batch_gradient_norms(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    loss_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, int]:
    """The squared gradient norms of a small and a big batch, from one batch: its two halves'
    gradients at the current weights (``torch.autograd.grad``: the parameters' ``.grad`` are
    not touched), and their mean, the whole batch's. Returns ``(tensor([|G_small|^2,
    |G_big|^2]), small_batch, big_batch)``, the first the mean over the two halves (both are
    estimates of the same expectation), all on the device (no host sync).

    The model runs in the mode it is in (a training step's: dropout on), with the global RNG
    forked and the buffers (batch norm's running statistics) put back afterwards, so a run
    with the check draws and trains exactly as one without. ``loss_scale``: a GradScaler's
    scale (fp16), multiplied into the loss against underflow and divided out of the norms.

    Example
    -------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> norms, small, big = half_batch_gradient_norms(nn.Linear(4, 1), nn.MSELoss(), torch.randn(64, 4),
    ...                                               torch.randn(64, 1))
    >>> norms.shape, small, big
    (torch.Size([2]), 32, 64)
    """
    half = len(inputs) // 2
    if half < 1:
        raise ValueError("the noise scale needs a batch of at least 2 examples")
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in model.buffers()]
    device = inputs.device
    halves = []
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        for part in (slice(0, half), slice(half, 2 * half)):
            with autocast():
                loss = loss_fn(model(inputs[part]), targets[part])
            if loss_scale is not None:
                loss = loss * loss_scale
            halves.append(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))
    with torch.no_grad():
        for saved, buffer in zip(buffers, model.buffers(), strict=True):
            buffer.copy_(saved)
        a, b = halves
        small_sq = (_squared_norm(a) + _squared_norm(b)) / 2
        big_sq = _squared_norm([x + y for x, y in zip(a, b, strict=True)]) / 4
        norms = torch.stack([small_sq, big_sq])
        if loss_scale is not None:
            norms = norms / loss_scale.float().square()
    return norms, half, 2 * half


def noise_scale_at(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    population: int | None = None,
) -> dict[str, Any]:
    """B_noise at the model's current weights, averaged over ``batches`` (each split in halves):
    the two estimates are averaged over the batches, then divided. ``population``: the size of
    the set the batches were drawn from without replacement (see :func:`unbiased_estimates`).
    Returns ``{"b_noise", "g2", "trace_sigma", "batches", "batch"}``.

    Example
    -------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> x = torch.randn(512, 8); y = x.sum(1, keepdim=True) + torch.randn(512, 1)
    >>> r = noise_scale_at(nn.Linear(8, 1), nn.MSELoss(), [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)])
    >>> r["batches"], r["batch"], r["b_noise"] > 0
    (4, 128, True)
    """
    if not batches:
        raise ValueError("noise_scale_at needs at least one batch")
    sums = None
    for xb, yb in batches:
        norms, small, big = half_batch_gradient_norms(model, loss_fn, xb, yb)
        g2, trace = unbiased_estimates(norms[0], norms[1], small, big, population)
        pair = torch.stack([g2, trace])
        sums = pair if sums is None else sums + pair
    g2, trace = (sums / len(batches)).tolist()
    return {"b_noise": noise_scale(trace, g2), "g2": g2, "trace_sigma": trace, "batches": len(batches),
            "batch": len(batches[0][0]) // 2 * 2}


# --------------------------------------------------------------------------- the findings


def _power_of_two(value: float) -> int:
    return 2 ** max(0, round(math.log2(max(value, 1.0))))


def _lr_advice(factor: float) -> str:
    return (f"scale the learning rate with it: by about {factor:.3g}x for SGD (linear scaling, Goyal et al. 2017, "
            f"arXiv 1706.02677; McCandlish et al. 2018 for B far below B_noise), by about {math.sqrt(factor):.3g}x (the square root) "
            "for Adam and AdamW (Malladi et al. 2022, arXiv 2205.10287), and check with babysit lr-find")


def _steps(b_noise: float, batch: int, new_batch: int) -> float:
    """The paper's S = S_min (1 + B_noise / B): steps at ``new_batch`` over steps at ``batch``."""
    if not math.isfinite(b_noise):
        return batch / new_batch
    return (1 + b_noise / new_batch) / (1 + b_noise / batch)


def _examples(b_noise: float, batch: int, new_batch: int) -> float:
    """The paper's E = E_min (1 + B / B_noise): examples at ``new_batch`` over those at ``batch``."""
    return (1 + new_batch / b_noise) / (1 + batch / b_noise)


def later_noise_scale(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """B_noise over the later half of a run's samples (``noise_scale.jsonl``): the mean of each
    estimate over those samples, divided (a flat window where the callback's EMA decays);
    None with fewer than :data:`MIN_SAMPLES` usable samples there."""
    samples = [r for r in records if isinstance(r.get("step"), int | float)
               and all(isinstance(r.get(k), int | float) and math.isfinite(r[k]) for k in ("g2", "trace_sigma"))]
    if not samples:
        return None
    samples.sort(key=lambda r: r["step"])
    first, last = samples[0]["step"], samples[-1]["step"]
    start = first + (last - first) * (1 - LATER_FRACTION)
    window = [r for r in samples if r["step"] >= start]
    if len(window) < MIN_SAMPLES:
        return None
    g2 = sum(r["g2"] for r in window) / len(window)
    trace = sum(r["trace_sigma"] for r in window) / len(window)
    return {"b_noise": noise_scale(trace, g2), "g2": g2, "trace_sigma": trace, "samples": len(window),
            "from_step": window[0]["step"], "to_step": window[-1]["step"]}


def noise_scale_findings(records: list[dict[str, Any]], *, batch_size: int,
                         train_size: int | None = None) -> list[Finding]:
    """``batch_too_small`` (info) when the run's batch is under B_noise / 10 over the later half
    of training, ``batch_too_large`` (a warning; info for full-batch training) when it is over
    10 B_noise.

    Too small is info: the run is not wrong, only slower in steps than it need be, and a small
    batch on small data (babysit's MNIST-1D examples) is a sound choice on one device. Too
    large is a warning: most of each step's compute buys nothing; but info when the batch is
    the whole training set (``batch_size: full``, chosen for L-BFGS, Newton or plain gradient
    descent on purpose). ``records``: the lines of ``noise_scale.jsonl``; ``batch_size``: the
    run's (global) batch; ``train_size``: the training set's size (caps the batch suggested).

    Example
    -------
    >>> records = [{"step": s, "g2": 1.0, "trace_sigma": 5000.0} for s in range(1, 200, 10)]
    >>> [f.id for f in noise_scale_findings(records, batch_size=32)]
    ['batch_too_small']
    >>> noise_scale_findings(records, batch_size=2048)
    []
    """
    later = later_noise_scale(records)
    if later is None or not batch_size > 0:
        return []
    b_noise = later["b_noise"]
    if math.isnan(b_noise):
        return []
    full = train_size is not None and batch_size >= train_size
    evidence = {**later, "batch_size": batch_size, "train_size": train_size, "factor": FACTOR,
                "window": f"the later {LATER_FRACTION:.0%} of the run's samples", "reference": REFERENCE}
    where = f"over steps {later['from_step']}-{later['to_step']} ({later['samples']} samples)"
    if b_noise > FACTOR * batch_size and not full:
        target = b_noise if math.isfinite(b_noise) else FACTOR * batch_size
        suggested = min(_power_of_two(target), train_size or _power_of_two(target))
        seen = (f"is {b_noise:.3g} {where}, more than {FACTOR:g}x the batch of {batch_size}: each step's gradient "
                f"is mostly noise, and the run takes about {1 + b_noise / batch_size:.3g}x the fewest steps it could"
                if math.isfinite(b_noise) else
                f"is beyond measure {where} (the noise outweighs the mean gradient on average): each step's "
                f"gradient, on a batch of {batch_size}, is mostly noise")
        return [Finding(
            "batch_too_small", "info",
            f"The gradient noise scale B_noise = tr(Sigma)/|G|^2 {seen} (McCandlish et al. 2018).",
            f"On hardware with room for larger batches, try data.batch_size={suggested} (toward B_noise, the "
            f"critical batch): about {_steps(b_noise, batch_size, suggested):.2g}x the steps, and "
            f"{_lr_advice(suggested / batch_size)}. On one busy device a small batch is fine as it is.",
            evidence)]
    if b_noise * FACTOR < batch_size:
        suggested = _power_of_two(b_noise)
        return [Finding(
            "batch_too_large", "info" if full else "warning",
            f"The gradient noise scale B_noise = tr(Sigma)/|G|^2 is {b_noise:.3g} {where}, under 1/{FACTOR:g} of "
            f"the batch of {batch_size}{' (the whole training set)' if full else ''}: the batch gradient is already "
            f"nearly exact, so the run uses about {1 + batch_size / b_noise:.3g}x the examples (compute) it needs "
            "(McCandlish et al. 2018).",
            f"Try data.batch_size={suggested} (near B_noise, the critical batch): about "
            f"{_steps(b_noise, batch_size, suggested):.2g}x the steps at {batch_size / suggested:.3g}x less compute "
            f"each, {_examples(b_noise, batch_size, suggested):.2g}x the examples in all; and "
            f"{_lr_advice(suggested / batch_size)}."
            + (" If full-batch training is the point (L-BFGS, Newton), leave it." if full else ""),
            evidence)]
    return []


__all__ = ["EMA_BETA", "FACTOR", "REFERENCE", "RunningNoiseScale", "half_batch_gradient_norms", "later_noise_scale",
           "noise_scale", "noise_scale_at", "noise_scale_findings", "unbiased_estimates"]
