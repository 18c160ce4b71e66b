"""Study ``depth``: a deep plain net against the same net with skip connections.

The claim (Hochreiter 1991, Bengio et al. 1994, Glorot & Bengio 2010 on vanishing
gradients; He et al. 2016, "Deep Residual Learning"): backpropagation through a deep stack
multiplies the gradient by every layer's Jacobian, so with saturating units it shrinks
geometrically and the first layers hardly learn; an identity skip, h <- h + f(h), adds a
path whose Jacobian is the identity, so the gradient reaches the first layer undiminished
and the deep net trains.

Both nets are babysit MLPs of the same depth, width, activation and init
(``model.residual: true`` wraps every hidden layer whose width does not change in a skip).
The monitors (:class:`babysit.checks.monitors.Monitor`) record each weight layer's gradient
RMS (``||grad|| / sqrt(numel)``); the table compares the first hidden layer's with the
output layer's at initialisation and over training, and how far each net trains.
"""

from __future__ import annotations

import statistics
from typing import Any

from babysit import data, nets
from babysit.checks.monitors import Monitor
from babysit.config import DataSpec, ModelSpec, OptimizerSpec
from babysit.optim.optimizers import build_optimizer
from babysit.studies.common import Progress, StudyResult, seed_all, steps_words, train_recorded
from babysit.studies.plots import curves_figure

VARIANTS = (("plain", False), ("residual", True))


def _gradient_rms(record: dict[str, Any], order: list[str]) -> list[float]:
    """The gradient RMS of every weight layer of a monitor record, input to output (``order``:
    the monitor's weight layers in the model's order; a record's own key order is not that)."""
    layers = record["layers"]
    return [layers[name]["grad_rms"] for name in order if "grad_rms" in layers.get(name, {})]


def depth_study(quick: bool = False, progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """First- against last-layer gradient and training progress, plain against residual.

    Quick: digits, 20 sigmoid layers of width 64, SGD momentum 0.9 at lr 0.001, batches of 32,
    at most 1,000 steps to 90% validation accuracy. Full: 30 layers, 3,000 steps.
    """
    say = progress or (lambda line: None)
    splits = data.load(DataSpec(source="digits", split_seed=seed))
    depth, budget = (20, 1000) if quick else (30, 3000)
    width, activation, lr, target, every = 64, "sigmoid", 0.001, 0.90, 20
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    profiles: dict[str, list[float]] = {}
    for label, residual in VARIANTS:
        seed_all(seed)
        model = nets.build(ModelSpec(hidden=[width] * depth, activation=activation, residual=residual),
                           splits.input_shape, splits.num_classes)
        optimizer = build_optimizer(OptimizerSpec(name="momentum", lr=lr, momentum=0.9), model)
        monitor = Monitor(model, optimizer, every=every, histogram_every=10**9)
        curve = train_recorded(model, optimizer, splits.train, splits.val, batch_size=32, max_steps=budget,
                               every=every, target_acc=target, seed=seed, monitor=monitor)
        monitor.detach()
        records = monitor.records
        order = [name for name, _ in monitor.weights]
        at_init = _gradient_rms(records[0], order)
        ratios = [g[0] / g[-1] for g in (_gradient_rms(r, order) for r in records) if g and g[-1] > 0]
        profiles[label] = at_init
        rows.append({"net": f"{label} ({depth} layers)", "grad_first_init": at_init[0], "grad_last_init": at_init[-1],
                     "ratio_init": at_init[0] / at_init[-1], "ratio_median": statistics.median(ratios),
                     "steps_to_target": curve.reached_step, "final_val_acc": curve.final_acc,
                     "final_train_loss": curve.final_loss})
        curves[label] = curve.to_dict()
        say(f"depth: {label:<8} first/last layer gradient at init {at_init[0] / at_init[-1]:.2g}, "
            f"{steps_words(curve.reached_step, budget)} to {target:.0%} validation accuracy ({curve.seconds:.1f} s)")

    conclusion, checks = depth_conclusion(rows, depth, activation, target, budget)
    return StudyResult(
        name="depth",
        title="Depth: plain against residual deep nets",
        claim="Gradients vanish through a deep plain stack of saturating layers, so its first layers hardly learn; "
              "identity skips carry the gradient to the first layer and the deep net trains (He et al. 2016).",
        setup=f"digits, {depth} hidden {activation} layers of width {width} (babysit's default init), SGD momentum 0.9 "
              f"lr {lr}, batch 32, at most {budget:,} steps to {target:.0%} validation accuracy, gradients sampled "
              f"every {every} steps, seed {seed}.",
        columns=[("net", "net"), ("grad_first_init", "grad RMS first layer (init)"),
                 ("grad_last_init", "grad RMS output layer (init)"), ("ratio_init", "first / last (init)"),
                 ("ratio_median", "first / last (median over training)"), ("steps_to_target", "steps to target"),
                 ("final_val_acc", "final val acc"), ("final_train_loss", "final train loss")],
        rows=rows, conclusion=conclusion, figures=_figures(profiles, curves, target),
        data={"gradient_rms_at_init": profiles, "curves": curves}, checks=checks, quick=quick,
    )


def _figures(profiles: dict[str, list[float]], curves: dict[str, Any], target: float) -> dict[str, Any]:
    layers = {name: (list(range(1, len(g) + 1)), g) for name, g in profiles.items()}
    accuracy = {name: ([p["step"] for p in c["points"]], [p["val_acc"] for p in c["points"]]) for name, c in curves.items()}
    return {
        "depth_gradient_per_layer": curves_figure(layers, "weight layer (input to output)", "gradient RMS at init",
                                                  log_y=True, title="gradient per layer at init"),
        "depth_accuracy": curves_figure(accuracy, "steps", "validation accuracy", hline=target,
                                        title="validation accuracy"),
    }


VANISHED = 1e-3  # the first layer's gradient RMS below this fraction of the output layer's: vanished
SKIP_GAIN = 100.0  # the residual net's first layer gets at least this many times the plain net's gradient


def depth_conclusion(rows: list[dict[str, Any]], depth: int, activation: str, target: float,
                     budget: int) -> tuple[list[str], dict[str, bool]]:
    """The conclusion lines and checks, computed from the table's two rows (plain, then
    residual: ``grad_first_init``, ``ratio_init``, ``steps_to_target``, ``final_val_acc``):
    whether the plain net's gradient vanished, how much more the skips carry, which net
    trained further, each as measured.

    Example
    -------
    >>> def r(first, ratio, steps, acc):
    ...     return {"grad_first_init": first, "ratio_init": ratio, "steps_to_target": steps, "final_val_acc": acc}
    >>> lines, checks = depth_conclusion([r(0.01, 1.5, 300, 0.93), r(0.01, 1.7, 600, 0.92)], 20, "sigmoid", 0.9, 1000)
    >>> print(lines[0])
    At init the first hidden layer's gradient RMS is 1.5x the output layer's in the plain 20-layer sigmoid net and 1.7x in the residual one: it does not vanish in the plain net here, and the first layer gets 1x the plain net's gradient through the skips.
    >>> checks["plain_gradient_vanishes"], checks["residual_trains_better"]
    (False, False)
    """
    plain, residual = rows
    checks = {
        "residual_first_layer_gradient_larger": residual["grad_first_init"] > SKIP_GAIN * plain["grad_first_init"],
        "plain_gradient_vanishes": plain["ratio_init"] < VANISHED,
        "residual_trains_better": residual["final_val_acc"] > plain["final_val_acc"],
    }
    if plain["grad_first_init"] > 0:
        more = f"{residual['grad_first_init'] / plain['grad_first_init']:.3g}x the plain net's gradient"
    else:
        more = "a gradient where the plain net's underflows to exactly 0 in float32"
    vanish = ("it has vanished in the plain net" if checks["plain_gradient_vanishes"] else
              "it does not vanish in the plain net here")
    conclusion = [
        f"At init the first hidden layer's gradient RMS is {plain['ratio_init']:.2g}x the output layer's in the plain "
        f"{depth}-layer {activation} net and {residual['ratio_init']:.2g}x in the residual one: {vanish}, and the "
        f"first layer gets {more} through the skips.",
        f"plain: {steps_words(plain['steps_to_target'], budget)} to {target:.0%} validation accuracy (final "
        f"{plain['final_val_acc']:.1%}); residual: {steps_words(residual['steps_to_target'], budget)} (final "
        f"{residual['final_val_acc']:.1%}): "
        + ("the residual net trained further." if checks["residual_trains_better"] else
           "the residual net did not train further than the plain one here."),
    ]
    return conclusion, checks
