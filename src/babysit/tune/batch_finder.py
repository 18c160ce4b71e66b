"""The batch-size finder: measured, not guessed.

For batch sizes in powers of two (8, 16, ... up to the training-set size or a cap), time
a few full training steps (forward, loss, backward, optimizer step) on a fresh copy of
the network after a warm-up, and report samples per second. The steps are timed in
``repeats`` blocks and the fastest block counts: on a shared machine every interruption
only adds time, so the minimum is the estimate least disturbed by others (``timeit``'s
reasoning). On CUDA the clock reads are fenced with ``torch.cuda.synchronize`` (kernels
run asynchronously; without it the time would be the launch time), and the first size that runs out of memory ends the search:
the cache is emptied and the sizes measured so far are the answer. On the CPU the search
ends at the cap.

The answer is two numbers: the largest batch that fits and the batch with the best
throughput. Past the point where the device is saturated throughput flattens, so the
best one is often not the largest; neither says which batch generalises best.

Beside them, from a spec, a third: the gradient noise scale B_noise at initialisation
(McCandlish et al. 2018, arXiv 1812.06162; :mod:`babysit.checks.noise_scale`), measured on
a few batches of the training set before anything is timed. It is about the batch beyond
which a larger one stops cutting the number of steps. It is the value at *initialisation*:
B_noise grows as the loss falls (often by an order of magnitude or more over a run), so it is
a lower bound on the critical batch later in training; ``checks.noise_scale: true`` follows it
during a run.

Example
-------
>>> import torch
>>> from torch import nn
>>> x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
>>> r = batch_find(nn.Linear(10, 3), nn.CrossEntropyLoss(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
...                x, y, steps=1, warmup=1, repeats=1)
>>> r.sizes, r.largest, r.best in r.sizes
([8, 16, 32, 64], 64, True)
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from babysit.checks.noise_scale import noise_scale_at
from babysit.errors import BabysitError
from babysit.optim.optimizers import build_optimizer
from babysit.run import prepare
from babysit.rundir import write_json
from babysit.tune.progress import StepProgress

if TYPE_CHECKING:
    from babysit.config import Experiment

SMALLEST = 8
# B_noise at init: averaged over this many batches of this many examples (or the training set):
# the per-batch estimates of |G|^2 are noisy (tests/test_noise_scale.py), their mean over 8 less so
NOISE_BATCHES = 8
NOISE_BATCH = 256
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class BatchFindResult:
    """Timings per batch size, smallest first; only the sizes that ran.

    ``largest`` is the largest batch that fit (None when not even the first did), ``best``
    the one with the most samples per second, ``out_of_memory_at`` the size that did not
    fit (None when the search ended at the cap). ``peak_memory_mb`` is CUDA's peak
    allocation during each size (the resident model and data included), None elsewhere.

    Example
    -------
    >>> r = BatchFindResult(sizes=[8, 16], seconds_per_step=[0.001, 0.0015],
    ...                     samples_per_s=[8000.0, 10666.7], device="cpu")
    >>> r.largest, r.best
    (16, 16)
    """

    sizes: list[int]
    seconds_per_step: list[float]
    samples_per_s: list[float]
    device: str
    peak_memory_mb: list[float | None] = field(default_factory=list)
    out_of_memory_at: int | None = None
    cap: int | None = None
    # the gradient noise scale at initialisation (noise_scale_at_init), None when not measured
    noise_scale_at_init: dict[str, Any] | None = None

    @property
    def largest(self) -> int | None:
        return self.sizes[-1] if self.sizes else None

    @property
    def best(self) -> int | None:
        if not self.sizes:
            return None
        return max(zip(self.samples_per_s, self.sizes, strict=True))[1]

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``largest`` and ``best``, for JSON."""
        return {**asdict(self), "largest": self.largest, "best": self.best}


def batch_sizes(cap: int, smallest: int = SMALLEST) -> list[int]:
    """Powers of two from ``smallest`` up to ``cap`` (just ``[cap]`` when ``cap`` is smaller).

    Example
    -------
    >>> batch_sizes(100), batch_sizes(5)
    ([8, 16, 32, 64], [5])
    """
    if cap < 1:
        raise BabysitError(f"batch-find: the largest batch must be >= 1, got {cap}")
    sizes, size = [], smallest
    while size <= cap:
        sizes.append(size)
        size *= 2
    return sizes or [cap]


def train_step(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
               autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
    """One full training step, as the training loop takes it: forward, loss, backward, step.

    Example
    -------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> before = model.weight.detach().clone()
    >>> train_step(model, torch.nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1),
    ...            torch.ones(4, 2), torch.zeros(4, 1))
    >>> bool((model.weight != before).any())
    True
    """
    with autocast():
        loss = loss_fn(model(xb), yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _cap(examples: int, max_batch: int | None) -> int:
    """The largest size to try: the training-set size, or ``max_batch`` when smaller."""
    if max_batch is not None and max_batch < 1:
        raise BabysitError(f"batch-find: --max must be >= 1, got {max_batch}")
    return examples if max_batch is None else min(max_batch, examples)


def _is_out_of_memory(exc: BaseException) -> bool:
    # CUDA raises its own class; MPS a RuntimeError that says so
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, "bad")
    if dtype == "bad":
        raise BabysitError(f"batch-find: precision must be fp32, bf16 or fp16, got {precision!r}")
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def batch_find(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer_factory: OptimizerFactory,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sizes: list[int] | None = None,
    max_batch: int | None = None,
    steps: int = 5,
    warmup: int = 2,
    repeats: int = 3,
    precision: str = "fp32",
    on_size: Callable[[int, int, float], None] | None = None,
) -> BatchFindResult:
    """Time ``steps`` training steps at each batch size; ``model`` itself is not trained.

    Parameters
    ----------
    model: the network, on the device of ``x`` and ``y``.
    loss_fn: ``loss_fn(outputs, targets) -> scalar``.
    optimizer_factory: ``model -> optimizer``; each size gets a fresh copy of the model
        and its own optimizer, so optimizer state (Adam's moments) is part of the memory.
    x, y: the training data; a batch of size ``b`` is its first ``b`` examples (cycled
        when ``b > len(x)``).
    sizes: the sizes to try (default: powers of two from 8 up to the cap).
    max_batch: the cap (default and at most ``len(x)``).
    steps, warmup, repeats: ``repeats`` blocks of ``steps`` timed steps, the fastest
        block counting, after ``warmup`` untimed ones (allocator, kernel choice, lazy init).
    precision: 'fp32', 'bf16' or 'fp16' autocast, as the training loop runs it.
    on_size: called as ``on_size(i, size, samples_per_s)`` after each size (a progress bar).

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> x, y = torch.randn(100, 4), torch.randn(100, 1)
    >>> r = batch_find(nn.Linear(4, 1), nn.MSELoss(), lambda m: torch.optim.Adam(m.parameters()),
    ...                x, y, max_batch=40, steps=1, warmup=0, repeats=1)
    >>> r.sizes, r.out_of_memory_at
    ([8, 16, 32], None)
    """
    if len(x) == 0:
        raise BabysitError("batch-find: no training examples")
    if steps < 1 or repeats < 1 or warmup < 0:
        raise BabysitError(f"batch-find: steps and repeats must be >= 1 and warmup >= 0, "
                           f"got steps={steps}, repeats={repeats}, warmup={warmup}")
    cap = _cap(len(x), max_batch)
    if sizes is None:
        sizes = batch_sizes(cap)
    else:
        if any(not isinstance(s, int) or s < 1 for s in sizes):
            raise BabysitError(f"batch-find: sizes must be positive integers, got {sizes}")
        sizes = sorted(set(sizes))
        if max_batch is not None:
            sizes = [s for s in sizes if s <= max_batch]
    device = x.device
    autocast = _autocast_for(precision, device)
    result = BatchFindResult(sizes=[], seconds_per_step=[], samples_per_s=[], device=str(device), cap=cap)
    for i, size in enumerate(sizes):
        index = torch.arange(size, device=device) % len(x)
        xb, yb = x[index], y[index]
        copy_of_model = optimizer = None
        out_of_memory = False
        try:
            copy_of_model = copy.deepcopy(model).train()
            optimizer = optimizer_factory(copy_of_model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(warmup):
                train_step(copy_of_model, loss_fn, optimizer, xb, yb, autocast)
            seconds = float("inf")
            for _ in range(repeats):
                _synchronize(device)
                started = time.perf_counter()
                for _ in range(steps):
                    train_step(copy_of_model, loss_fn, optimizer, xb, yb, autocast)
                _synchronize(device)
                seconds = min(seconds, (time.perf_counter() - started) / steps)
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            out_of_memory = True
        if out_of_memory:
            # outside the except block: the traceback's frames (activations, gradients) are
            # gone now; drop the last references, then the cached blocks can go back
            del copy_of_model, optimizer, xb, yb
            _empty_cache(device)
            result.out_of_memory_at = size
            break
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        result.sizes.append(size)
        result.seconds_per_step.append(seconds)
        result.samples_per_s.append(size / seconds if seconds > 0 else float("inf"))
        result.peak_memory_mb.append(peak)
        del copy_of_model, optimizer
        if on_size is not None:
            on_size(i, size, result.samples_per_s[-1])
    return result


# --------------------------------------------------------------------------- the noise scale


def noise_scale_at_init(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, batches: int = NOISE_BATCHES,
                        batch: int = NOISE_BATCH) -> dict[str, Any] | None:
    """B_noise of ``model`` as it is (at initialisation, before training), in train mode and
    fp32: ``batches`` random batches of ``batch`` examples (fewer when the training set is
    smaller), each split in halves (:func:`babysit.checks.noise_scale.noise_scale_at`); the
    model, its buffers and the RNG are left as they were. None with under 4 training examples.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> x, y = torch.randn(300, 4), torch.randint(0, 3, (300,))
    >>> r = noise_scale_at_init(nn.Linear(4, 3), nn.CrossEntropyLoss(), x, y)
    >>> r["batches"], r["batch"], r["population"]
    (8, 256, 300)
    """
    size = min(batch, len(x)) // 2 * 2
    if size < 2 or len(x) < 4:
        return None
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=generator)
                       for _ in range(-(-batches * size // len(x)))]).to(x.device)
    draws = [(x[index], y[index]) for index in order[: batches * size].split(size)]
    was_training = model.training
    model.train()
    try:
        result = noise_scale_at(model, loss_fn, draws, population=len(x))
    finally:
        model.train(was_training)
    return {**result, "population": len(x), "reference": "McCandlish et al. 2018, arXiv 1812.06162"}


# --------------------------------------------------------------------------- from a spec


def batch_find_from_spec(spec: Experiment, *, max_batch: int | None = None, steps: int = 5,
                         quiet: bool = True, stream: Any = None) -> BatchFindResult:
    """The batch-size finder for a spec: its network, loss, optimizer and precision on its
    device, over its training split.

    Example
    -------
    >>> from babysit.config import Experiment
    >>> r = batch_find_from_spec(Experiment(data={"source": "spirals", "samples": 200}), max_batch=32, steps=1)
    >>> r.sizes
    [8, 16, 32]
    """
    if spec.optimizer.name in ("lbfgs", "newton"):
        raise BabysitError(f"optimizer.name: batch-find times single optimizer steps; {spec.optimizer.name} runs a "
                           "line search or a Newton solve per step, choose another optimizer")
    _, splits, model, loss_fn = prepare(spec)
    x, y = splits.train.x, splits.train.y
    noise = noise_scale_at_init(model, loss_fn, x, y, seed=spec.seed)  # before anything is timed
    kwargs = dict(max_batch=max_batch, steps=steps, precision=spec.train.precision)
    factory: OptimizerFactory = lambda m: build_optimizer(spec.optimizer, m)  # noqa: E731
    if quiet:
        result = batch_find(model, loss_fn, factory, x, y, **kwargs)
    else:
        total = len(batch_sizes(_cap(len(x), max_batch)))
        with StepProgress("batch-find", total, stream=stream) as bar:
            result = batch_find(model, loss_fn, factory, x, y,
                                on_size=lambda i, size, rate: bar.update(i + 1, f"batch {size}: {rate:,.0f} samples/s"),
                                **kwargs)
            bar.finish(len(result.sizes))
    result.noise_scale_at_init = noise
    return result


# --------------------------------------------------------------------------- output


def batch_find_table(result: BatchFindResult) -> Any:
    """A ``rich.table.Table`` of the timings, the best and the largest size marked.

    Example
    -------
    >>> r = BatchFindResult(sizes=[8, 16], seconds_per_step=[0.001, 0.0015], samples_per_s=[8000.0, 10666.7], device="cpu")
    >>> [column.header for column in batch_find_table(r).columns]
    ['batch', 'ms / step', 'samples / s', '']
    """
    from rich.table import Table

    show_memory = any(m is not None for m in result.peak_memory_mb)
    table = Table(title=f"batch-find on {result.device}", title_justify="left")
    table.add_column("batch", justify="right")
    table.add_column("ms / step", justify="right")
    table.add_column("samples / s", justify="right")
    if show_memory:
        table.add_column("peak MiB", justify="right")
    table.add_column("")
    for i, size in enumerate(result.sizes):
        marks = [m for m, hit in (("best", size == result.best), ("largest", size == result.largest)) if hit]
        row = [str(size), f"{result.seconds_per_step[i] * 1e3:.3g}", f"{result.samples_per_s[i]:,.0f}"]
        if show_memory:
            peak = result.peak_memory_mb[i]
            row.append("" if peak is None else f"{peak:,.0f}")
        table.add_row(*row, ", ".join(marks), style="bold" if size == result.best else None)
    return table


def batch_find_lines(result: BatchFindResult) -> list[str]:
    """The summary lines ``babysit batch-find`` prints under the table.

    Example
    -------
    >>> r = BatchFindResult(sizes=[8, 16], seconds_per_step=[0.001, 0.0015], samples_per_s=[8000.0, 10666.7],
    ...                     device="cuda:0", out_of_memory_at=32)
    >>> batch_find_lines(r)[0]
    'largest batch that fits: 16 (out of memory at 32)'
    """
    if not result.sizes:
        size = result.out_of_memory_at
        return [f"no batch fits: out of memory already at batch {size}; use a smaller model or more memory"]
    why = (f"out of memory at {result.out_of_memory_at}" if result.out_of_memory_at is not None
           else f"no size up to {result.cap} ran out of memory" if result.cap is not None
           else "the largest size tried")
    best = result.sizes.index(result.best)
    return [
        f"largest batch that fits: {result.largest} ({why})",
        f"best throughput: batch {result.best}, {result.samples_per_s[best]:,.0f} samples/s",
        *noise_scale_lines(result.noise_scale_at_init),
    ]


def noise_scale_lines(noise: dict[str, Any] | None) -> list[str]:
    """What ``babysit batch-find`` says of the noise scale at initialisation.

    Example
    -------
    >>> noise_scale_lines({"b_noise": 123.4, "batches": 8, "batch": 256})[0][:56]
    'gradient noise scale at initialisation: B_noise = 123 (8'
    >>> noise_scale_lines(None)
    []
    """
    if noise is None:
        return []
    b_noise = noise.get("b_noise")
    if isinstance(b_noise, int | float) and math.isfinite(b_noise):
        value = f"B_noise = {b_noise:.3g}"
    elif isinstance(b_noise, int | float) and b_noise > 0:
        value = "B_noise beyond measure (the noise outweighs the mean gradient)"
    else:
        value = "B_noise not measurable (no gradient noise)"
    return [f"gradient noise scale at initialisation: {value} ({noise['batches']} batches of {noise['batch']}; "
            "McCandlish et al. 2018)",
            "  it grows as the loss falls, so the critical batch later in training is larger; "
            "train with checks.noise_scale=true to follow it"]


def write_batch_find(result: BatchFindResult, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``batch_find.json`` (the timings, plus ``extra``) into ``directory``.

    Example
    -------
    >>> import json, tempfile
    >>> r = BatchFindResult(sizes=[8], seconds_per_step=[0.001], samples_per_s=[8000.0], device="cpu")
    >>> json.loads(write_batch_find(r, tempfile.mkdtemp()).read_text())["best"]
    8
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "batch_find.json"
    write_json(path, {**(extra or {}), **result.to_dict()}, indent=2)
    return path
