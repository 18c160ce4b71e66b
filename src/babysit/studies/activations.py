"""Study ``activations``: which nonlinearity trains fastest, and which ones die or saturate.

The claim (Krizhevsky, Sutskever & Hinton 2012, figure 1; CS231n "Neural Networks 1",
"Commonly used activation functions"): networks of rectified units reach a given accuracy
several times faster than saturating ones, and the sigmoid is the slowest (its outputs are
not zero-centred and its gradient is at most 1/4, so it shrinks with every layer). The
price of ReLU is that units can die; tanh and sigmoid units saturate.

The same MLP (babysit's default init, kaiming with each activation's gain) is trained with
each activation from the same seed, with the same optimizer, batches and learning rate,
until its validation accuracy reaches the target. The monitors
(:class:`babysit.checks.monitors.Monitor`) sample every 10 steps: the dead fraction of
ReLU units and the saturated fraction of tanh/sigmoid outputs are their medians over the
run (leaky ReLU, ELU and maxout have no dead or saturated state the monitors count).
"""

from __future__ import annotations

from typing import Any

from babysit import data, nets
from babysit.checks.monitors import Monitor, monitor_summary
from babysit.config import DataSpec, ModelSpec, OptimizerSpec
from babysit.optim.optimizers import build_optimizer
from babysit.studies.common import Progress, StudyResult, seed_all, steps_words, train_recorded
from babysit.studies.plots import curves_figure

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout")


def _median_of_layers(values: dict[str, float]) -> float | None:
    finite = sorted(v for v in values.values() if v == v)
    return finite[len(finite) // 2] if finite else None


def activations_study(quick: bool = False, progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """Steps to a target validation accuracy, dead and saturated fractions, per activation.

    Quick: scikit-learn's digits, a 64-64-64 MLP, SGD with momentum 0.9 at lr 0.01, batches
    of 32, target 90%, at most 3,000 steps. Full: MNIST-1D, a 100-100-100 MLP, target 50%,
    at most 10,000 steps.
    """
    say = progress or (lambda line: None)
    if quick:
        data_spec, hidden, target, budget = DataSpec(source="digits"), [64, 64, 64], 0.90, 3000
    else:
        data_spec, hidden, target, budget = DataSpec(source="mnist1d"), [100, 100, 100], 0.50, 10000
    splits = data.load(data_spec.model_copy(update={"split_seed": seed}))
    lr, batch_size, every = 0.01, 32, 10
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for name in ACTIVATIONS:
        seed_all(seed)
        model = nets.build(ModelSpec(hidden=hidden, activation=name), splits.input_shape, splits.num_classes)
        optimizer = build_optimizer(OptimizerSpec(name="momentum", lr=lr, momentum=0.9), model)
        monitor = Monitor(model, optimizer, every=every, histogram_every=10**9)
        curve = train_recorded(model, optimizer, splits.train, splits.val, batch_size=batch_size, max_steps=budget,
                               every=every, target_acc=target, seed=seed, monitor=monitor)
        monitor.detach()
        summary = monitor_summary(monitor.records)
        dead = _median_of_layers(summary["dead_fraction_median"])
        saturated = _median_of_layers(summary["saturated_fraction_median"])
        rows.append({"activation": name, "steps_to_target": curve.reached_step, "seconds_to_target": curve.reached_time,
                     "final_val_acc": curve.final_acc, "final_train_loss": curve.final_loss,
                     "dead_fraction": dead, "saturated_fraction": saturated})
        curves[name] = curve.to_dict()
        say(f"activations: {name:<10} {steps_words(curve.reached_step, budget)} to {target:.0%} validation accuracy "
            f"({curve.seconds:.1f} s)")

    steps = {r["activation"]: r["steps_to_target"] for r in rows}
    conclusion = [
        ", ".join(f"{r['activation']} {steps_words(r['steps_to_target'], budget)}" for r in rows)
        + f" to {target:.0%} validation accuracy (same net, seed, optimizer and batches).",
    ]
    relu, sigmoid = steps["relu"], steps["sigmoid"]
    if relu is not None and (sigmoid is None or sigmoid > relu):
        factor = f"{sigmoid / relu:.1f}x" if sigmoid is not None else f"more than {budget / relu:.0f}x"
        conclusion.append(f"relu reached {target:.0%} in {relu:,} steps, sigmoid took {factor} as many: "
                          "the saturating, non-zero-centred sigmoid is the slowest, as Krizhevsky et al. 2012 found.")
    else:
        conclusion.append("relu was not faster than sigmoid here: the claim did not reproduce in this setting.")
    fastest = min((r for r in rows if r["steps_to_target"] is not None), key=lambda r: r["steps_to_target"], default=None)
    if fastest is not None:
        conclusion.append(f"fastest: {fastest['activation']} ({fastest['steps_to_target']:,} steps).")
    for r in rows:
        if r["dead_fraction"] is not None:
            conclusion.append(f"{r['activation']}: median dead fraction {r['dead_fraction']:.1%} of units.")
        if r["saturated_fraction"] is not None:
            conclusion.append(f"{r['activation']}: median saturated fraction {r['saturated_fraction']:.1%} of outputs.")
    checks = {"relu_faster_than_sigmoid": relu is not None and (sigmoid is None or relu < sigmoid),
              "tanh_faster_than_sigmoid": steps["tanh"] is not None and (sigmoid is None or steps["tanh"] < sigmoid)}
    return StudyResult(
        name="activations",
        title="Activation functions: steps to a target accuracy",
        claim="ReLU networks train several times faster than saturating ones; the sigmoid is the slowest "
              "(Krizhevsky et al. 2012, fig. 1; CS231n). ReLU units can die, tanh and sigmoid units saturate.",
        setup=f"{data_spec.source}, MLP {hidden}, SGD momentum 0.9 lr {lr}, batch {batch_size}, "
              f"target {target:.0%} validation accuracy, at most {budget:,} steps, measured every {every} steps, seed {seed}.",
        columns=[("activation", "activation"), ("steps_to_target", "steps to target"),
                 ("seconds_to_target", "seconds to target"), ("final_val_acc", "final val acc"),
                 ("final_train_loss", "final train loss"), ("dead_fraction", "dead fraction"),
                 ("saturated_fraction", "saturated fraction")],
        rows=rows, conclusion=conclusion, figures=_figures(curves, target), data={"curves": curves, "target": target},
        checks=checks, quick=quick,
    )


def _figures(curves: dict[str, Any], target: float) -> dict[str, Any]:
    accuracy = {name: ([p["step"] for p in c["points"]], [p["val_acc"] for p in c["points"]]) for name, c in curves.items()}
    loss = {name: ([p["step"] for p in c["points"]], [p["loss"] for p in c["points"]]) for name, c in curves.items()}
    return {
        "activations_accuracy": curves_figure(accuracy, "steps", "validation accuracy", hline=target,
                                              title="validation accuracy per activation", log_x=True),
        "activations_loss": curves_figure(loss, "steps", "training loss", log_y=True, log_x=True,
                                          title="training loss per activation"),
    }
