"""The learning-rate range test: train briefly while the lr grows, read a rate off the loss.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2015/2017), and fastai's
``lr_find``: on a copy of the network, raise the learning rate exponentially from
``start`` to ``end`` over ``steps`` mini-batch steps and record the training loss at each
rate. The loss falls once the rate is large enough to make progress, flattens, then blows
up when the rate is too large. The run stops there: the loss is not finite, or its
bias-corrected EMA (beta 0.9) is above 4x its minimum and the last two raw losses are too
(one bad batch is not divergence).

Where other finders go wrong, and what this one does instead:

- *Lagging smoothing.* fastai reads its curve through an EMA (beta 0.98). An EMA is
  causal, so it lags: its minimum sits right of the real one, by how much depends on the
  noise and on when the run stopped. Here the EMA serves only the online stop test; the
  curve the suggestion is read from is smoothed afterwards with a centred Gaussian kernel
  in log-lr (std ``width`` = 0.3 decades), which has no lag. Losses above the divergence
  level count as that level, so neither the initial loss nor the blow-up leaks into the
  minimum through the kernel's tails, and the minimum is only looked for among the
  points below it.
- *Fooled by early spikes.* The steepest-slope rule (the lr where the smoothed loss falls
  fastest) latches onto the noise of the first steps at tiny rates.
- *Grid jitter.* The argmin on the grid moves by whole grid steps. The minimum is refined
  by fitting a parabola in log-lr to the smoothed curve around it.

The suggestion is that minimum divided by 10 (fastai's "minimum/10": the minimum is the
largest rate that still helps in a run this short; training wants one safely below it).

Measured on ``examples/mnist1d-mlp.yaml`` (AdamW), seeds 0-19, lr 1e-7..10, one thread;
max/min of the 20 suggestions at 200 steps (at 100 steps), and the median at 200:

    this one                    1.5   (1.6)      median 4.1e-3
    EMA-0.98 argmin / 10        2.8   (24)       median 3.3e-2: the lag, 8x higher
    steepest slope, EMA 0.98    2e5   (4e5)      16 of 20 seeds picked ~1e-7
    raw argmin / 10             10    (5.3)      median 7.4e-3

The suggestion drifts down as ``steps`` grows (by each rate the network has trained
longer): median 5.9e-3 at 100 steps, 4.1e-3 at 200. Trained at its suggestion (0.0042,
seed 0) the example reaches 70.6% test accuracy, as at its hand-picked 0.01 (one thread;
over seeds 0-4, 69.9% against 70.2%, a spread of about 1.5 points from seed to seed).

Example
-------
>>> import torch
>>> from torch import nn
>>> x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
>>> y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
>>> result = lr_find(nn.Linear(4, 1), nn.MSELoss(), lambda m: torch.optim.SGD(m.parameters(), lr=1.0),
...                  x, y, 32, start=1e-4, end=10.0, steps=60, seed=0)
>>> result.diverged_at is not None and result.suggestion < result.diverged_at
True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from babysit.data.batching import Batches
from babysit.errors import BabysitError
from babysit.optim.optimizers import build_optimizer
from babysit.run import prepare
from babysit.rundir import jsonable, next_free, write_json
from babysit.tune.progress import StepProgress

if TYPE_CHECKING:
    from babysit.config import Experiment

DIVERGENCE_FACTOR = 4.0  # stop when the smoothed loss exceeds 4x its minimum (fastai, Smith)
EMA_BETA = 0.9  # the online smoothing for the stop test only; ~10 steps of memory
WARMUP_STEPS = 10  # no 4x test during the first steps: the EMA of 1-2 losses is a spike detector
SUSTAINED_STEPS = 2  # ... and the last 2 raw losses must be above the level too: one bad batch is not divergence
SMOOTHING_DECADES = 0.3  # std of the Gaussian kernel in log10(lr) for the suggestion curve
SUGGESTION_DIVISOR = 10.0  # fastai's "minimum / 10"
MIN_FALL = 0.1  # a smoothed loss that fell by less than 10% has no minimum worth reading

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class LRFindResult:
    """What the range test measured.

    ``lrs[i]`` is the rate of step ``i``, ``losses[i]`` its training loss (mean over
    ``batches_per_lr`` batches; ``inf``/``nan`` when it diverged), ``smoothed[i]`` the
    centred log-lr smoothing of the losses, ``suggestion`` the rate to train with,
    ``lr_at_minimum`` where the smoothed loss bottoms out and ``diverged_at`` the rate at
    which the run stopped for divergence (None when it reached ``end``). ``note`` says
    when the range did not bracket a minimum.

    Example
    -------
    >>> r = LRFindResult(lrs=[0.1, 1.0], losses=[1.0, float("nan")], smoothed=[1.0, 4.0],
    ...                  suggestion=0.01, diverged_at=1.0)
    >>> r.to_dict()["losses"]  # non-finite numbers become null in JSON
    [1.0, None]
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    diverged_at: float | None
    lr_at_minimum: float | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe numbers (``inf``/``nan`` as None)."""
        return jsonable(asdict(self))


# --------------------------------------------------------------------------- the curve


def lr_schedule(start: float, end: float, steps: int) -> list[float]:
    """``steps`` rates from ``start`` to ``end``, evenly spaced in log scale.

    Example
    -------
    >>> [f"{lr:.0e}" for lr in lr_schedule(1e-4, 1.0, 5)]
    ['1e-04', '1e-03', '1e-02', '1e-01', '1e+00']
    """
    _check_range(start, end, steps)
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def smooth_in_log_lr(lrs: list[float], losses: list[float], width: float = SMOOTHING_DECADES,
                     cap: float | None = None) -> list[float]:
    """The losses smoothed with a centred Gaussian kernel of std ``width`` decades of lr.

    Centred, so it has no lag: its minimum is where the loss bottoms out, not some steps
    after. Losses above ``cap`` (non-finite ones included) count as ``cap``, so the blow-up
    at the end cannot leak far to the left through the kernel's tails.

    Example
    -------
    >>> lrs = [10 ** (k / 10) for k in range(-30, 1)]
    >>> noisy = [(i - 20) ** 2 / 100 + (0.3 if i % 2 else -0.3) for i in range(31)]
    >>> smooth = smooth_in_log_lr(lrs, noisy, width=0.2)
    >>> min(range(31), key=smooth.__getitem__)  # the noise is gone, the minimum stays
    20
    """
    t = np.log10(np.asarray(lrs, dtype=np.float64))
    values = np.asarray(losses, dtype=np.float64)
    if cap is None:
        finite = values[np.isfinite(values)]
        cap = float(finite.max()) if finite.size else 0.0
    values = np.where(np.isfinite(values), np.minimum(values, cap), cap)
    weights = np.exp(-0.5 * ((t[:, None] - t[None, :]) / width) ** 2)  # (N, N), rows: output points
    return (weights @ values / weights.sum(axis=1)).tolist()


def minimum_of_curve(lrs: list[float], smoothed: list[float], width: float = SMOOTHING_DECADES,
                     eligible: list[bool] | None = None) -> float:
    """The lr where a smoothed loss curve is lowest, refined off the grid.

    Only ``eligible`` points (default all) are candidates; the range test passes the ones
    whose raw loss stayed below the divergence level, so the minimum is never placed
    among the points where the run was already blowing up. A parabola in log-lr is fitted
    to the candidates within two kernel widths of the lowest one; its vertex (kept inside
    that window) is the minimum. Without a convex fit, the lowest point itself.

    Example
    -------
    >>> lrs = [10 ** (k / 4) for k in range(-12, 1)]       # 1e-3 .. 1, 4 points a decade
    >>> curve = [(k / 4 + 1.1) ** 2 for k in range(-12, 1)]  # lowest at lr = 10**-1.1
    >>> round(minimum_of_curve(lrs, curve, width=0.3), 4)
    0.0794
    """
    t = np.log10(np.asarray(lrs, dtype=np.float64))
    values = np.asarray(smoothed, dtype=np.float64)
    candidates = np.ones(len(t), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if not candidates.any():
        raise ValueError("minimum_of_curve: no eligible point")
    best = int(np.argmin(np.where(candidates, values, np.inf)))
    window = candidates & (np.abs(t - t[best]) <= 2 * width)
    if window.sum() >= 3:
        a, b, _ = np.polyfit(t[window], values[window], 2)
        if a > 0:
            vertex = float(np.clip(-b / (2 * a), t[window].min(), t[window].max()))
            return 10.0**vertex
    return float(lrs[best])


# --------------------------------------------------------------------------- the test


def lr_find(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer_factory: OptimizerFactory,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | str,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 200,
    seed: int = 0,
    batches_per_lr: int = 1,
    grad_clip: float | None = None,
    width: float = SMOOTHING_DECADES,
    on_step: Callable[[int, float, float], None] | None = None,
) -> LRFindResult:
    """Run the learning-rate range test on a copy of ``model``; ``model`` is left untouched.

    Parameters
    ----------
    model: the network, on the device of ``x`` and ``y``.
    loss_fn: ``loss_fn(outputs, targets) -> scalar``.
    optimizer_factory: ``model -> optimizer`` (called on the copy). Every parameter group
        keeps its lr relative to the first group's; the first group follows the schedule.
    x, y: the training inputs and targets; mini-batches of ``batch_size`` (an int or
        ``'full'``) are drawn from them, reshuffled on every pass.
    start, end, steps: ``steps`` rates from ``start`` to ``end``, log-spaced.
    seed: the shuffling and any dropout; the same seed gives the same curve.
    batches_per_lr: optimizer steps taken, and losses averaged, at each rate.
    grad_clip: clip the global gradient norm, as the training loop does.
    width: the smoothing kernel's std in decades of lr.
    on_step: called as ``on_step(i, lr, loss)`` after each rate (a progress bar).

    Returns
    -------
    :class:`LRFindResult`; ``suggestion`` is the lr at the minimum of the smoothed loss / 10.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(128, 3, generator=g), torch.randint(0, 2, (128,), generator=g)
    >>> r = lr_find(nn.Linear(3, 2), nn.CrossEntropyLoss(), lambda m: torch.optim.Adam(m.parameters()),
    ...             x, y, 16, start=1e-5, end=10.0, steps=40, seed=0)
    >>> len(r.lrs) == len(r.losses) == len(r.smoothed), 1e-6 <= r.suggestion <= 1.0
    (True, True)
    """
    schedule = lr_schedule(start, end, steps)
    if batches_per_lr < 1:
        raise BabysitError(f"lr-find: batches_per_lr must be >= 1, got {batches_per_lr}")
    if len(x) == 0:
        raise BabysitError("lr-find: no training examples")
    model = copy.deepcopy(model)  # the caller's weights, buffers and grads stay as they were
    model.train()
    optimizer = optimizer_factory(model)
    if isinstance(optimizer, torch.optim.LBFGS) or getattr(optimizer, "needs_closure", False):
        raise BabysitError("lr-find: this optimizer picks its own step (line search or Newton solve), so the lr "
                           "range test does not apply; use another optimizer.name")
    first_lr = optimizer.param_groups[0]["lr"] or 1.0
    ratios = [group["lr"] / first_lr for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"]]

    device = x.device
    accelerated = device.type in ("cuda", "mps")
    lrs: list[float] = []
    losses: list[float] = []
    diverged_at: float | None = None
    ema, best_ema = 0.0, math.inf
    above = 0  # consecutive raw losses above the divergence level
    # dropout is seeded; the caller's RNG (CPU, and the data's device) is left where it was
    with torch.random.fork_rng(devices=[device] if accelerated else [],
                               device_type=device.type if accelerated else "cuda"):
        torch.manual_seed(seed)
        batches = Batches(x, y, batch_size, torch.Generator().manual_seed(seed))
        stream = _endless(batches)
        for i, lr in enumerate(schedule):
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            total = torch.zeros((), device=device)
            for _ in range(batches_per_lr):
                xb, yb = next(stream)
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                total += loss.detach()
            value = (total / batches_per_lr).item()  # one sync per rate: the stop test needs the number
            lrs.append(lr)
            losses.append(value)
            if on_step is not None:
                on_step(i, lr, value)
            if not math.isfinite(value):
                diverged_at = lr
                break
            ema = EMA_BETA * ema + (1 - EMA_BETA) * value
            smoothed_now = ema / (1 - EMA_BETA ** (i + 1))  # bias correction: the EMA starts at 0
            above = above + 1 if value > DIVERGENCE_FACTOR * best_ema else 0
            if i >= WARMUP_STEPS and smoothed_now > DIVERGENCE_FACTOR * best_ema and above >= SUSTAINED_STEPS:
                diverged_at = lr
                break
            best_ema = min(best_ema, smoothed_now)

    # the curve is read below the divergence level only: clipping there keeps the initial
    # loss and the blow-up from leaking into the minimum through the kernel's tails
    level = DIVERGENCE_FACTOR * best_ema if math.isfinite(best_ema) else math.inf
    eligible = [math.isfinite(v) and v <= level for v in losses]
    if not any(eligible):
        return LRFindResult(lrs=lrs, losses=losses, smoothed=[math.inf] * len(lrs),
                            suggestion=start / SUGGESTION_DIVISOR, diverged_at=diverged_at,
                            note=f"the loss was not finite even at lr {start:g}; lower start")
    smoothed = smooth_in_log_lr(lrs, losses, width, cap=level)
    lr_at_minimum = minimum_of_curve(lrs, smoothed, width, eligible)
    suggestion = lr_at_minimum / SUGGESTION_DIVISOR
    lowest = int(np.argmin(np.where(eligible, smoothed, np.inf)))
    last = max(i for i, ok in enumerate(eligible) if ok)
    note = None
    fell = 1 - smoothed[lowest] / smoothed[0] if smoothed[0] > 0 else 1.0
    if lowest == 0:
        note = f"the loss never fell below its value at lr {start:g}; lower start"
    elif fell < MIN_FALL:
        widen = "lower start" if diverged_at is not None else "raise end"
        note = f"the smoothed loss fell by only {fell:.0%} over the range, so the minimum is noise; {widen}"
    elif diverged_at is None and lowest == last:
        note = f"the loss was still falling at lr {end:g}; raise end"
    return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggestion,
                        diverged_at=diverged_at, lr_at_minimum=lr_at_minimum, note=note)


def _endless(batches: Batches) -> Any:
    """Mini-batches forever, reshuffled on every pass."""
    while True:
        yield from batches


def _check_range(start: float, end: float, steps: int) -> None:
    if not (isinstance(start, int | float) and math.isfinite(start) and start > 0):
        raise BabysitError(f"lr-find: start must be a number > 0, got {start!r}")
    if not (isinstance(end, int | float) and math.isfinite(end) and end > start):
        raise BabysitError(f"lr-find: end must be a number > start ({start:g}), got {end!r}")
    if not (isinstance(steps, int) and steps >= 5):
        raise BabysitError(f"lr-find: steps must be an integer >= 5, got {steps!r}")


# --------------------------------------------------------------------------- from a spec


def lr_find_from_spec(spec: Experiment, *, start: float = 1e-7, end: float = 10.0, steps: int = 200,
                      quiet: bool = True, stream: Any = None) -> LRFindResult:
    """The range test for a spec: its freshly built network, optimizer, batch size and seed.

    The same steps as training (batches of ``data.batch_size`` from the training split,
    ``optimizer.grad_clip``); the regularization penalties, input noise and precision of
    the spec are left out: the test is about the optimizer's step size. A rich progress
    bar on ``stream`` unless ``quiet``.

    Example
    -------
    >>> from babysit.config import Experiment
    >>> spec = Experiment(data={"source": "spirals", "samples": 300, "batch_size": 32})
    >>> r = lr_find_from_spec(spec, start=1e-4, end=10.0, steps=30)
    >>> len(r.lrs) <= 30 and r.suggestion > 0
    True
    """
    _check_range(start, end, steps)
    if spec.optimizer.name in ("lbfgs", "newton"):
        raise BabysitError(f"optimizer.name: {spec.optimizer.name} picks its own step (line search / Newton solve), "
                           "so the lr range test does not apply; choose another optimizer")
    _, splits, model, loss_fn = prepare(spec)
    factory: OptimizerFactory = lambda m: build_optimizer(spec.optimizer, m)  # noqa: E731
    kwargs = dict(start=start, end=end, steps=steps, seed=spec.seed, grad_clip=spec.optimizer.grad_clip)
    if quiet:
        return lr_find(model, loss_fn, factory, splits.train.x, splits.train.y, spec.data.batch_size, **kwargs)
    with StepProgress("lr-find", steps, stream=stream) as bar:
        result = lr_find(model, loss_fn, factory, splits.train.x, splits.train.y, spec.data.batch_size,
                         on_step=lambda i, lr, loss: bar.update(i + 1, f"lr {lr:.2e}  loss {loss:.4f}"),
                         **kwargs)
        bar.finish(len(result.lrs))
    return result


def lr_find_directory(spec: Experiment, out: str | Path | None) -> Path:
    """Where ``babysit lr-find`` writes: ``out``, else ``runs/<name>-lr-find`` (``-2``, ``-3``...
    when that holds an earlier result, as run directories are named).

    Example
    -------
    >>> from babysit.config import Experiment
    >>> str(lr_find_directory(Experiment(name="demo"), None))
    'runs/demo-lr-find'
    """
    if out is not None:
        return Path(out)
    base = Path("runs") / f"{spec.run_name}-lr-find"
    return next_free(base, taken=lambda p: (p / "lr_find.json").exists())


# --------------------------------------------------------------------------- files


def format_lr(lr: float) -> str:
    """Two significant digits, written so YAML reads it back as a float (``1.0e-05``, not ``1e-05``).

    Example
    -------
    >>> format_lr(0.004237), format_lr(1e-5), format_lr(3.3e-7)
    ('0.0042', '1.0e-05', '3.3e-07')
    """
    text = f"{lr:.2g}"
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def write_lr_find(result: LRFindResult, directory: str | Path, *, title: str = "lr range test",
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``lr_find.json`` (the numbers, plus ``extra``) and ``lr_find.png`` (the figure).

    Example
    -------
    >>> import tempfile
    >>> r = LRFindResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 3.0], smoothed=[1.0, 0.6, 2.0],
    ...                  suggestion=1e-3, diverged_at=1e-1, lr_at_minimum=1e-2)
    >>> json_path, png_path = write_lr_find(r, tempfile.mkdtemp())
    >>> json_path.name, png_path.read_bytes()[:4]
    ('lr_find.json', b'\\x89PNG')
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / "lr_find.json", directory / "lr_find.png"
    data = {**(extra or {}), **result.to_dict()}
    write_json(json_path, data, indent=2)
    plot_lr_find(result, png_path, title=title)
    return json_path, png_path


def plot_lr_find(result: LRFindResult, path: str | Path, *, title: str = "lr range test") -> Path:
    """Loss against lr on a log axis, raw and smoothed, the suggestion marked; saved as a PNG.

    Example
    -------
    >>> import tempfile
    >>> r = LRFindResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 3.0], smoothed=[1.0, 0.6, 2.0],
    ...                  suggestion=1e-3, diverged_at=1e-1)
    >>> plot_lr_find(r, tempfile.mkdtemp() + "/lr.png").stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    lrs = np.asarray(result.lrs)
    raw = np.asarray(result.losses, dtype=np.float64)
    smooth = np.asarray(result.smoothed, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        finite = np.isfinite(raw)
        ax.plot(lrs[finite], raw[finite], color="tab:blue", alpha=0.35, linewidth=1, label="loss")
        ax.plot(lrs, smooth, color="tab:blue", linewidth=2, label="smoothed")
        ax.set_xscale("log")
        if finite.any():
            # the blow-up at the end would squash the interesting part of the curve
            low = float(min(raw[finite].min(), smooth.min()))
            high = float(min(raw[finite].max(), 1.15 * smooth.max()))
            pad = 0.05 * (high - low or 1.0)
            ax.set_ylim(low - pad, high + pad)
        ax.axvline(result.suggestion, color="tab:green", linestyle="--", linewidth=1.5,
                   label=f"suggestion {format_lr(result.suggestion)}")
        if result.lr_at_minimum is not None:
            ax.axvline(result.lr_at_minimum, color="tab:gray", linestyle=":", linewidth=1,
                       label=f"minimum {format_lr(result.lr_at_minimum)}")
        if result.diverged_at is not None:
            ax.axvline(result.diverged_at, color="tab:red", linestyle=":", linewidth=1,
                       label=f"diverged {format_lr(result.diverged_at)}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
