"""The loss landscape of a finished run: ``babysit landscape RUN`` and ``babysit.load_run``.

:func:`~babysit.run.load.load_run` rebuilds what a run trained: the spec from
``config.yaml``, the data splits exactly as training made them (:func:`babysit.run.prepare`:
same seed, same carving, preprocessing fitted on the same training split), the network
with the best weights (``checkpoints/best.pt``, else ``last.pt``) and the loss function.

:func:`landscape_run` answers, from those weights and a fixed sample of the training
data, where training ended and what the ground around it looks like:

- ``spectrum``: the top-k and bottom-k Hessian eigenvalues with residuals (Lanczos), the
  trace (Hutchinson, 100 probes) with its standard error, the eigenvalue density (SLQ,
  Ghorbani et al. 2019) with the negative/positive mass ratio and the condition number of
  the positive part, the gradient norm and the critical-point class, and lambda_max's
  step-size limit next to the learning rate used (LeCun et al. 1998; Goh 2017 for
  momentum), with a verdict in plain words;
- ``surface``: the loss on a 2D grid along two filter-normalised random directions (Li et
  al. 2018), and 1D curves along each and along the top Hessian eigenvector;
- ``trajectory``: the loss along the top two PCA directions of the weight snapshots that
  ``train.trajectory_every`` saved, with the path drawn on it (Li et al. 2018, sec. 7);
- ``interpolate``: the loss on the straight line from the initial weights (or from
  another run's) to the trained ones, and its barrier height (Goodfellow, Vinyals & Saxe
  2015; Frankle et al. 2020).

Everything runs in eval mode on a copy of the weights; in float64 on the CPU when the
model is small (at most :data:`FLOAT64_MAX_PARAMETERS`), else in the run's precision on
its device. Every random choice (the sample, the start vectors, the probes, the
directions) comes from ``seed``, so the same command gives the same numbers. Results go
to ``RUN/landscape.json`` (sections not recomputed are kept) and ``RUN/figures/
landscape_*.png``, and the report is drawn again.

Example
-------
>>> import tempfile
>>> from babysit.config import Experiment
>>> from babysit.run import run
>>> spec = Experiment(data={"source": "spirals", "samples": 200}, model={"hidden": [8]}, train={"epochs": 2})
>>> path = run(spec, out=tempfile.mkdtemp() + "/run", quiet=True).path
>>> loaded = load_run(path)
>>> loaded.checkpoint, len(loaded.splits.train) > 0
('best.pt', True)
>>> result = landscape_run(path, what=["spectrum"], samples=100, quiet=True)
>>> result["spectrum"]["critical_point"] in ("minimum", "maximum", "saddle", "not_critical", "degenerate")
True
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from babysit.errors import BabysitError
from babysit.landscape import figures
from babysit.landscape.critical import classify_critical_point
from babysit.landscape.hvp import HessianOperator
from babysit.landscape.spectrum import hessian_eigenvalues, hessian_trace, spectral_density
from babysit.landscape.surface import (
    interpolate,
    loss_surface,
    random_directions,
    trajectory_directions,
)
from babysit.report import render
from babysit.report.figures import png_bytes
from babysit.run.load import LoadedRun, given_run, load_run, load_trajectory, trajectory_files
from babysit.rundir import jsonable, read_jsonl, write_json
from babysit.train.device import resolve_device
from babysit.tune.progress import StepProgress

__all__ = [
    "LANDSCAPE_ITEMS",
    "LoadedRun",
    "landscape_run",
    "load_run",
    "load_trajectory",
    "step_size_verdict",
]

LANDSCAPE_ITEMS = ("spectrum", "surface", "trajectory", "interpolate")
DEFAULT_ITEMS = ("spectrum", "surface")
# float64 on the CPU up to this many parameters: H v then agrees with the exact Hessian to
# ~1e-12, and a model this size takes seconds per hundred products on a CPU core
FLOAT64_MAX_PARAMETERS = 2_000_000
HVP_CHUNK = 1024  # examples per H v batch (bounds the memory of the double backward)
TRACE_PROBES = 100
DENSITY_STEPS, DENSITY_RUNS = 90, 10
FIGURE_PREFIX = "landscape_"


# --------------------------------------------------------------------------- the verdict


def step_size_verdict(
    lambda_max: float, lr: float, optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0
) -> dict[str, Any]:
    """The curvature limit on the learning rate at the end point, and how ``lr`` compares.

    Gradient descent on a quadratic with top curvature lambda diverges along the top
    eigenvector when lr > 2 / lambda (LeCun, Bottou, Orr & Müller, "Efficient BackProp",
    1998, sec. 5). With heavy-ball momentum m (torch's SGD) the limit is 2 (1 + m) /
    lambda, with Nesterov's (2 + 2m) / ((1 + 2m) lambda): the roots of the
    characteristic polynomials stay in the unit disc exactly below these (Goh, "Why
    Momentum Really Works", 2017). Coupled weight decay adds ``weight_decay`` to every
    curvature. Adaptive methods (Adam, RMSprop, Adagrad) rescale each weight's step, so
    their lr is no step length along the Hessian; second-order and line-search methods
    set their own step: for those the limit is shown for reference only.

    >>> v = step_size_verdict(lambda_max=10.0, lr=0.5, optimizer="sgd")
    >>> v["limit"], v["lr_over_limit"], v["verdict"].split(":")[0]
    (0.2, 2.5, 'above the limit')
    """
    out: dict[str, Any] = {"lr": lr, "optimizer": optimizer, "two_over_lambda_max": None, "limit": None,
                           "lr_over_limit": None}
    if not (math.isfinite(lambda_max) and lambda_max > 0):
        out["verdict"] = "no positive curvature at the end point: no curvature limit on the step size"
        return out
    out["two_over_lambda_max"] = 2.0 / lambda_max
    curvature = lambda_max + (weight_decay if optimizer in ("sgd", "momentum", "nesterov") else 0.0)
    if optimizer in ("sgd", "momentum"):
        limit, rule = 2.0 * (1.0 + momentum) / curvature, ("2/λmax" if momentum == 0 else f"2(1+m)/λmax with m={momentum:g}")
    elif optimizer == "nesterov":
        limit, rule = (2.0 + 2.0 * momentum) / ((1.0 + 2.0 * momentum) * curvature), f"(2+2m)/((1+2m)λmax) with m={momentum:g}"
    else:
        limit, rule = 2.0 / lambda_max, "2/λmax"
    if weight_decay and optimizer in ("sgd", "momentum", "nesterov"):
        rule += f", λmax + weight decay {weight_decay:g}"
    ratio = lr / limit
    out.update(limit=limit, lr_over_limit=ratio, rule=rule)
    if optimizer in ("adam", "adamw", "rmsprop", "adagrad"):
        out["verdict"] = (f"not comparable: {optimizer} divides each step by a running gradient scale, so lr {lr:g} "
                          f"is no step length along the Hessian (2/λmax = {2.0 / lambda_max:.3g}, for reference)")
    elif optimizer in ("newton", "lbfgs", "quickprop"):
        out["verdict"] = (f"not comparable: {optimizer} chooses its own step length "
                          f"(2/λmax = {2.0 / lambda_max:.3g}, for reference)")
    elif ratio > 1.0:
        out["verdict"] = (f"above the limit: lr {lr:g} is {ratio:.3g}x the stable step {limit:.3g} ({rule}); plain "
                          "gradient descent at this rate diverges along the sharpest direction here, so training "
                          "ended where it could not settle (edge of stability) or the lr was lowered before the end")
    elif ratio > 0.5:
        out["verdict"] = (f"near the limit: lr {lr:g} is {ratio:.0%} of the stable step {limit:.3g} ({rule}); "
                          "training sits at the edge of stability, a larger lr would diverge")
    elif ratio < 0.01:
        out["verdict"] = (f"far below the limit: lr {lr:g} is {ratio:.2g}x the stable step {limit:.3g} ({rule}); "
                          "steps are much smaller than the curvature allows, a larger lr may train faster")
    else:
        out["verdict"] = f"below the limit: lr {lr:g} is {ratio:.2g}x the stable step {limit:.3g} ({rule}); stable"
    return out


# --------------------------------------------------------------------------- the command


class _Progress:
    """Phases of the work: on a terminal one rich bar (see StepProgress) whose text shows the
    H v products of the current phase as they are taken; off a terminal (a pipe, a log) plain
    lines: what will be computed, then a line as each phase ends, and one every
    ``HEARTBEAT_S`` seconds while a long phase runs."""

    HEARTBEAT_S = 30.0

    def __init__(self, phases: Sequence[str], quiet: bool, stream: Any):
        self.phases = list(phases)
        self.done = 0
        self.phase = ""
        self.stream = stream
        self.bar = StepProgress("landscape", total=len(self.phases), stream=stream)
        self.plain = not quiet and not self.bar.enabled
        if quiet:
            self.bar.enabled = False
        self.matvecs = 0  # H v products in the current phase
        self._started = self._said = time.monotonic()

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def _say(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)
        self._said = time.monotonic()

    def announce(self, line: str) -> None:
        """A line before the work starts (plain output only)."""
        if self.plain:
            self._say(line)

    def start(self, phase: str) -> None:
        self.phase, self.matvecs = phase, 0
        self._started = time.monotonic()
        self.bar.update(self.done, phase)

    def tick(self, matvecs: int) -> None:
        self.matvecs += 1
        if self.plain:
            now = time.monotonic()
            if now - self._said >= self.HEARTBEAT_S:
                self._say(f"landscape {self.done + 1}/{len(self.phases)} {self.phase}: {self.matvecs} H·v so far "
                          f"({now - self._started:.0f} s)")
        else:
            self.bar.update(self.done, f"{self.phase}: {matvecs} H·v")

    def end(self) -> None:
        self.done += 1
        self.bar.update(self.done, self.phase)
        if self.plain:
            products = f", {self.matvecs} H·v" if self.matvecs else ""
            self._say(f"landscape {self.done}/{len(self.phases)} {self.phase}: done in "
                      f"{time.monotonic() - self._started:.1f} s{products}")


def _operator_with_progress(progress: _Progress) -> type:

    class ProgressOperator(HessianOperator):
        def matvec(self, v: Tensor) -> Tensor:
            out = super().matvec(v)
            progress.tick(self.matvecs)
            return out

        __call__ = matvec

    return ProgressOperator


def parse_what(what: str | Sequence[str] | None) -> list[str]:
    """``"spectrum,surface"`` (or a list) as the checked, ordered list of items.

    >>> parse_what("surface, spectrum")
    ['spectrum', 'surface']
    """
    if what is None:
        return list(DEFAULT_ITEMS)
    items = [w.strip() for w in (what.split(",") if isinstance(what, str) else what) if w.strip()]
    unknown = [w for w in items if w not in LANDSCAPE_ITEMS]
    if unknown:
        raise BabysitError(f"--what: unknown item {unknown[0]!r}; choose from {', '.join(LANDSCAPE_ITEMS)}")
    if not items:
        raise BabysitError(f"--what: name at least one of {', '.join(LANDSCAPE_ITEMS)}")
    return [w for w in LANDSCAPE_ITEMS if w in items]


def _final_lr(run_dir: Path) -> float | None:
    lrs = [r["lr"] for r in read_jsonl(run_dir / "metrics.jsonl") if isinstance(r.get("lr"), int | float)]
    return float(lrs[-1]) if lrs else None


def landscape_run(
    run_dir: str | Path,
    what: str | Sequence[str] | None = None,
    *,
    resolution: int = 31,
    samples: int = 1000,
    other: str | Path | None = None,
    span: float = 1.0,
    k: int = 5,
    seed: int = 0,
    quiet: bool = False,
    stream: Any = None,
    render_report: bool = True,
    model: nn.Module | None = None,
    data: tuple[Tensor, Tensor] | None = None,
    loss_fn: Any = None,
) -> dict[str, Any]:
    """Compute the landscape items ``what`` of the run in ``run_dir``; write
    ``landscape.json`` and ``figures/landscape_*.png``, redraw the report and return the
    results (what landscape.json now holds).

    Parameters
    ----------
    what
        Any of ``spectrum``, ``surface``, ``trajectory``, ``interpolate`` (a list or a
        comma-separated string; default spectrum and surface).
    resolution
        Grid points per axis of surfaces and points on the interpolation line (odd, >= 3,
        so the trained weights are the grid centre).
    samples
        The size of the fixed training sample every quantity is computed on (all of the
        training split when it is smaller), drawn with ``seed``.
    other
        ``interpolate``: another run of the same network to interpolate to; default the
        run's own initial weights.
    span
        Surfaces cover -span..span times the (filter-normalised) directions.
    k
        How many top and bottom eigenvalues.
    model, data, loss_fn
        The trained network, a sample ``(x, y)`` of its training data and its loss, for a run
        whose config.yaml cannot rebuild them (``babysit.watch``, the Lightning callback):
        then the run's own are not loaded (see :func:`~babysit.run.load.given_run`).
    """

    items = parse_what(what)
    if resolution < 3 or resolution % 2 == 0:
        raise BabysitError(f"--resolution: must be odd and >= 3 so the trained weights sit on the grid centre, got {resolution}")
    if samples < 1:
        raise BabysitError(f"--samples: must be >= 1, got {samples}")
    if k < 1:
        raise BabysitError(f"k: must be >= 1, got {k}")
    if not (math.isfinite(span) and span > 0):
        raise BabysitError(f"--span: must be > 0, got {span}")
    run_dir = Path(run_dir)
    if other is not None and "interpolate" not in items:
        raise BabysitError("--other: only used by --what interpolate; add interpolate to --what")
    given = (model, data, loss_fn)
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise BabysitError("landscape: give model, data and loss_fn together (a run of your own loop), or none")
    # checks the directory first: every later error is about the items
    loaded = given_run(run_dir, model, data, loss_fn) if model is not None else load_run(run_dir)
    if "trajectory" in items:
        found = trajectory_files(run_dir)
        if len(found) < 3:
            raise BabysitError(
                f"{run_dir}: {len(found)} trajectory snapshot{'s' if len(found) != 1 else ''} in checkpoints/trajectory "
                "(need 3 or more); train with train.trajectory_every=N to save the weights every N steps")
    other_loaded = load_run(other) if other is not None else None
    if "interpolate" in items and other is None and not loaded.initial_state:
        raise BabysitError(f"{run_dir}: no initial weights (checkpoints/initial.pt) to interpolate from; "
                           "give another run with --other")

    model = loaded.model
    parameters = sum(p.numel() for p in model.parameters())
    if parameters <= FLOAT64_MAX_PARAMETERS:
        dtype, device = torch.float64, torch.device("cpu")
    else:

        dtype, device = torch.float32, resolve_device(loaded.spec.train.device)
    model = model.to(device=device, dtype=dtype).eval()

    train = loaded.splits.train
    count = min(samples, len(train))
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=generator)[:count].sort().values
    x, y = train.x.cpu()[index], train.y.cpu()[index]
    x = x.to(dtype) if torch.is_floating_point(x) else x
    y = y.to(dtype) if torch.is_floating_point(y) else y
    data = (x.to(device), y.to(device))
    loss_fn = loaded.loss_fn.to(device=device, dtype=dtype)  # a loss with weights: in the same precision

    path_json = run_dir / "landscape.json"
    results: dict[str, Any] = {}
    if path_json.exists():
        try:
            previous = json.loads(path_json.read_text(encoding="utf-8"))
            results = previous if isinstance(previous, dict) else {}
        except (OSError, json.JSONDecodeError):
            results = {}
    results.update({
        "run": loaded.spec.run_name,
        "checkpoint": loaded.checkpoint,
        "parameters": parameters,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "samples": count,
        "seed": seed,
    })
    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    written: list[Path] = []

    def save(name: str, fig: Any) -> None:
        target = figures_dir / f"{FIGURE_PREFIX}{name}.png"
        target.write_bytes(png_bytes(fig, dpi=90))
        written.append(target)

    phases = []
    if "spectrum" in items:
        phases += ["top eigenvalues", "bottom eigenvalues", "gradient", "trace", "density"]
    if "surface" in items:
        phases += ["sharpest direction"] if "spectrum" not in items else []
        phases += ["surface", "1D curves"]
    if "trajectory" in items:
        phases += ["trajectory"]
    if "interpolate" in items:
        phases += ["interpolation"]

    with _Progress(phases, quiet, stream) as progress:
        progress.announce(f"landscape: {', '.join(items)} of {loaded.spec.run_name} on {count} training examples "
                          f"({results['dtype']} on {device}), {len(phases)} phases")
        operator_class = _operator_with_progress(progress)
        op = operator_class(model, loss_fn, data, batch_size=HVP_CHUNK)
        top = None

        if "spectrum" in items:
            started = time.perf_counter()
            results["spectrum"], top = _spectrum(op, loaded, run_dir, k, seed, progress)
            results["spectrum"]["seconds"] = round(time.perf_counter() - started, 3)
            density = results["spectrum"].pop("_density")
            bottom = results["spectrum"].pop("_bottom")
            save("density", figures.spectral_density_figure(density, top, bottom))
            save("eigenvalues", figures.eigenvalue_bars(top, bottom))

        if "surface" in items:
            started = time.perf_counter()
            if top is None:

                progress.start("sharpest direction")
                top = hessian_eigenvalues(op, k=1, which="top", seed=seed)
                progress.end()
            results["surface"], curves, surface = _surface(model, loss_fn, data, op, top, resolution, span, seed, progress)
            results["surface"]["seconds"] = round(time.perf_counter() - started, 3)
            save("surface", figures.surface_figure(surface, title=f"{loaded.spec.run_name}: loss around the trained weights"))
            save("curves_1d", figures.curves_figure(curves, surface.center_loss))

        if "trajectory" in items:
            started = time.perf_counter()
            progress.start("trajectory")
            results["trajectory"], surface, coordinates, steps = _trajectory(
                run_dir, model, loss_fn, data, resolution)
            results["trajectory"]["seconds"] = round(time.perf_counter() - started, 3)
            progress.end()
            save("trajectory", figures.trajectory_figure(surface, coordinates, steps,
                                                          results["trajectory"]["explained_variance_ratio"]))

        if "interpolate" in items:
            started = time.perf_counter()
            progress.start("interpolation")
            results["interpolation"], line = _interpolation(loaded, other_loaded, model, loss_fn, data, resolution)
            results["interpolation"]["seconds"] = round(time.perf_counter() - started, 3)
            progress.end()
            save("interpolation", figures.interpolation_figure(
                line, results["interpolation"]["start"], results["interpolation"]["end"]))

    results["figures"] = sorted({*results.get("figures", []), *(p.name for p in written)})
    ordered = {key: results[key] for key in (
        "run", "checkpoint", "parameters", "dtype", "device", "samples", "seed",
        "spectrum", "surface", "trajectory", "interpolation", "figures") if key in results}
    ordered.update({key: value for key, value in results.items() if key not in ordered})
    write_json(path_json, ordered, indent=1)
    if render_report:

        try:
            render(run_dir)
        except Exception as exc:  # noqa: BLE001 (the landscape is written; the page can be redrawn)
            print(f"report: not redrawn ({type(exc).__name__}: {exc}); retry with: babysit report {run_dir}",
                  file=sys.stderr)
    return jsonable(ordered)


# --------------------------------------------------------------------------- the items


def _spectrum(op: Any, loaded: LoadedRun, run_dir: Path, k: int, seed: int,
              progress: _Progress) -> tuple[dict[str, Any], Any]:

    k = min(k, op.dim)
    progress.start("top eigenvalues")
    top = hessian_eigenvalues(op, k=k, which="top", seed=seed)
    progress.end()
    progress.start("bottom eigenvalues")
    bottom = hessian_eigenvalues(op, k=k, which="bottom", seed=seed)
    progress.end()
    progress.start("gradient")
    spec = loaded.spec.optimizer
    point = classify_critical_point(op, lr=spec.lr, seed=seed, top=top, bottom=bottom)
    progress.end()
    progress.start("trace")
    trace = hessian_trace(op, probes=TRACE_PROBES, seed=seed)
    progress.end()
    progress.start("density")
    density = spectral_density(op, steps=min(DENSITY_STEPS, op.dim), runs=DENSITY_RUNS, seed=seed)
    progress.end()
    lambda_max = float(top.eigenvalues[0])
    scale = max(abs(lambda_max), abs(float(bottom.eigenvalues[0])), 1e-300)
    verdict = step_size_verdict(lambda_max, spec.lr, spec.name, spec.momentum, spec.weight_decay)
    verdict["final_lr"] = _final_lr(run_dir)
    verdict["schedule"] = loaded.spec.schedule.name
    result = {
        "critical_point": point.kind,
        "strict": point.strict,
        "loss": point.loss,
        "gradient_norm": point.gradient_norm,
        "lambda_max": lambda_max,
        "lambda_min": float(bottom.eigenvalues[0]),
        "top_eigenvalues": [float(v) for v in top.eigenvalues],
        "top_residuals": [float(r) for r in top.residuals],
        "bottom_eigenvalues": [float(v) for v in bottom.eigenvalues],
        "bottom_residuals": [float(r) for r in bottom.residuals],
        # ||Hv - λv|| over the largest |λ|: what "converged" is judged on
        "max_relative_residual": float(torch.cat([top.residuals, bottom.residuals]).max()) / scale,
        "converged": bool(top.converged and bottom.converged),
        "trace": trace.trace,
        "trace_std_error": trace.std_error,
        "trace_probes": trace.probes,
        "condition_number": point.condition_number,
        "positive_condition_number": density.positive_condition_number(point.eig_tol),
        "negative_positive_mass_ratio": density.negative_mass_ratio,
        "learning_rate": verdict,
        "thresholds": {"grad_tol": point.grad_tol, "eig_tol": point.eig_tol},
        "density": {"runs": density.runs, "steps": density.steps,
                    "nodes": [float(v) for v in density.nodes], "weights": [float(w) for w in density.weights]},
        "matvecs": op.matvecs,
        "_density": density,
        "_bottom": bottom,
    }
    return result, top


def _surface(model: nn.Module, loss_fn: Any, data: tuple[Tensor, Tensor], op: Any, top: Any, resolution: int,
             span: float, seed: int, progress: _Progress) -> tuple[dict[str, Any], dict[str, Any], Any]:

    progress.start("surface")
    directions = random_directions(model, 2, seed=seed)
    surface = loss_surface(model, loss_fn, data, directions=directions, steps=resolution, span=span,
                           batch_size=HVP_CHUNK)
    progress.end()
    progress.start("1D curves")
    # the sharpest direction at the length of the random ones: how much steeper the ground is there
    length = float(op.flatten(directions[0]).norm())
    sharp = top.eigenvectors[0] * length
    sharp_curve = loss_surface(model, loss_fn, data, directions=[sharp], steps=resolution, span=span,
                               batch_size=HVP_CHUNK)
    progress.end()
    mid = resolution // 2
    alphas = surface.coordinates[0]
    curves = {
        "random direction 1": (alphas, surface.losses[:, mid]),
        "random direction 2": (alphas, surface.losses[mid, :]),
        "top Hessian eigenvector": (sharp_curve.coordinates[0], sharp_curve.losses),
    }
    losses = surface.losses
    low = int(torch.argmin(losses))
    i, j = divmod(low, resolution)
    h = float(alphas[1] - alphas[0])

    def curvature(line: Tensor) -> float:
        # central second difference at the centre: d^T H d up to O(h^2)
        return float((line[mid + 1] + line[mid - 1] - 2 * line[mid]) / h**2)

    result = {
        "resolution": resolution,
        "span": span,
        "directions": "filter-normalised Gaussian (Li et al. 2018), biases and norm parameters zeroed",
        "center_loss": surface.center_loss,
        "min_loss": float(losses.min()),
        "min_at": [float(surface.coordinates[0][i]), float(surface.coordinates[1][j])],
        "center_is_grid_minimum": bool(low == mid * resolution + mid),
        "max_loss": float(losses.max()),
        # d^T H d along each 1D curve, by the central difference at the centre
        "curvature_at_center": {name: curvature(line) for name, (_, line) in curves.items()},
        "coordinates": [float(a) for a in alphas],
        "losses": losses.tolist(),
        "sharpest_losses": sharp_curve.losses.tolist(),
    }
    return result, curves, surface


def _trajectory(run_dir: Path, model: nn.Module, loss_fn: Any, data: tuple[Tensor, Tensor],
                resolution: int) -> tuple[dict[str, Any], Any, Tensor, list[int]]:

    steps, states = load_trajectory(run_dir, model)
    found = trajectory_directions(model, states, count=2)
    coordinates = found.coordinates  # (snapshots, 2): each snapshot's offset from the end point
    span = 1.15 * float(coordinates.abs().max()) or 1.0
    surface = loss_surface(model, loss_fn, data, directions=found.directions, steps=resolution, span=span,
                           batch_size=HVP_CHUNK)
    result = {
        "snapshots": len(states),
        "first_step": steps[0],
        "last_step": steps[-1],
        "explained_variance_ratio": [float(v) for v in found.explained_variance_ratio],
        "span": span,
        "resolution": resolution,
        "center_loss": surface.center_loss,
        "min_loss": float(surface.losses.min()),
        "max_loss": float(surface.losses.max()),
        "steps": steps,
        "path": coordinates.tolist(),
        "coordinates": surface.coordinates[0].tolist(),
        "losses": surface.losses.tolist(),
    }
    return result, surface, coordinates, steps


def _interpolation(loaded: LoadedRun, other: LoadedRun | None, model: nn.Module, loss_fn: Any,
                   data: tuple[Tensor, Tensor], resolution: int) -> tuple[dict[str, Any], Any]:

    if other is None:
        # from the seeded initial weights (alpha = 0) to the trained ones (alpha = 1)
        start_model = copy.deepcopy(model)
        start_model.load_state_dict(loaded.initial_state)
        end_state = dict(model.state_dict())
        start, end = "initialisation", f"{loaded.spec.run_name} ({loaded.checkpoint})"
    else:
        mine = {n: tuple(p.shape) for n, p in loaded.model.state_dict().items()}
        theirs = {n: tuple(p.shape) for n, p in other.model.state_dict().items()}
        if mine != theirs:
            raise BabysitError(f"--other: {other.path} trains another network than {loaded.path} "
                               "(parameter names or shapes differ); interpolate between runs of one architecture")
        start_model = model
        end_state = other.model.state_dict()
        start = f"{loaded.spec.run_name} ({loaded.checkpoint})"
        end = f"{other.spec.run_name} ({other.path}, {other.checkpoint})"
    line = interpolate(start_model, end_state, loss_fn, data, steps=resolution, batch_size=HVP_CHUNK)
    peak = int(torch.argmax(line.losses))
    result = {
        "start": start,
        "end": end,
        "barrier": line.barrier,
        "loss_start": float(line.losses[0]),
        "loss_end": float(line.losses[-1]),
        "max_loss": float(line.losses[peak]),
        "alpha_at_max": float(line.alphas[peak]),
        "monotone_decrease": bool((line.losses[1:] <= line.losses[:-1] + 1e-12).all()),
        "alphas": line.alphas.tolist(),
        "losses": line.losses.tolist(),
    }
    return result, line


def landscape_lines(result: dict[str, Any], what: str | Sequence[str] | None = None) -> list[str]:
    """The lines ``babysit landscape`` prints: one or two per item computed.

    >>> landscape_lines({"interpolation": {"start": "initialisation", "end": "run (best.pt)", "barrier": 0.0,
    ...                  "loss_start": 1.1, "loss_end": 0.2, "monotone_decrease": True}}, "interpolate")
    ['interpolation initialisation -> run (best.pt): loss 1.1 -> 0.2, barrier 0 (monotone decrease)']
    """
    items = parse_what(what)
    lines = []
    s = result.get("spectrum")
    if "spectrum" in items and s:
        kind = s["critical_point"].replace("_", " ") + (" (strict)" if s["strict"] else "")
        lines.append(f"end point: {kind}; gradient norm {s['gradient_norm']:.3g}, loss {s['loss']:.4g}")
        top = ", ".join(f"{v:.4g}" for v in s["top_eigenvalues"])
        bottom = ", ".join(f"{v:.4g}" for v in s["bottom_eigenvalues"])
        lines.append(f"top eigenvalues: {top} (largest relative residual {s['max_relative_residual']:.1e})")
        lines.append(f"bottom eigenvalues: {bottom}")
        kappa = s["positive_condition_number"]
        lines.append(f"trace {s['trace']:.4g} ± {s['trace_std_error']:.2g} ({s['trace_probes']} probes); "
                     f"condition number of the positive part {'n/a' if kappa is None else f'{kappa:.3g}'}; "
                     f"negative/positive eigenvalue mass {s['negative_positive_mass_ratio']:.3g}")
        lines.append(f"learning rate: {s['learning_rate']['verdict']}")
    f = result.get("surface")
    if "surface" in items and f:
        where = "at the grid minimum" if f["center_is_grid_minimum"] else f"grid minimum {f['min_loss']:.4g} at ({f['min_at'][0]:.3g}, {f['min_at'][1]:.3g})"
        curv = ", ".join(f"{name} {c:.3g}" for name, c in f["curvature_at_center"].items())
        lines.append(f"surface {f['resolution']}x{f['resolution']}: loss {f['center_loss']:.4g} at the centre ({where}), "
                     f"up to {f['max_loss']:.4g} at the edge; curvature along {curv}")
    t = result.get("trajectory")
    if "trajectory" in items and t:
        ev = t["explained_variance_ratio"]
        lines.append(f"trajectory: {t['snapshots']} snapshots (steps {t['first_step']}..{t['last_step']}), "
                     f"PC1 {ev[0]:.1%} and PC2 {ev[1]:.1%} of the path's variance")
    i = result.get("interpolation")
    if "interpolate" in items and i:
        shape = "monotone decrease" if i["monotone_decrease"] else "not monotone"
        lines.append(f"interpolation {i['start']} -> {i['end']}: loss {i['loss_start']:.4g} -> {i['loss_end']:.4g}, "
                     f"barrier {i['barrier']:.4g} ({shape})")
    return lines
