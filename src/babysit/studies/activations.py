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

import math
from typing import Any

from babysit import data, nets
from babysit.checks.monitors import DEAD_FRACTION, SATURATED_FRACTION, Monitor, monitor_summary
from babysit.config import DataSpec, ModelSpec, OptimizerSpec
from babysit.optim.optimizers import build_optimizer
from babysit.studies.common import Progress, StudyResult, seed_all, steps_words, train_recorded
from babysit.studies.plots import curves_figure

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout")
SATURATING = ("tanh", "sigmoid")
SEVERAL = 3.0  # "several times faster": at least this ratio of steps (Krizhevsky et al. measured 6x against tanh)
NEGLIGIBLE = 0.01  # a median dead or saturated fraction below this is called none to speak of


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

    conclusion, checks = activations_conclusion(rows, target, budget)
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


def _ratio_words(fast: str, fast_steps: int | None, slow: str, slow_steps: int | None,
                 budget: int) -> tuple[float | None, str, str]:
    """How many times fewer steps ``fast`` took than ``slow`` (a lower bound when ``slow``
    never reached the target; None when ``fast`` did not), the comparison in words, stated
    the way the numbers go, and the ratio in short ('6.9x', '>23x', '-')."""
    if fast_steps is None:
        if slow_steps is None:
            return None, f"neither {fast} nor {slow} reached the target within {budget:,} steps", "-"
        return None, f"{slow} took {slow_steps:,} steps, {fast} did not get there within {budget:,}", "-"
    if slow_steps is None:
        ratio = budget / fast_steps
        return ratio, (f"{fast} took {fast_steps:,} steps, {slow} did not get there within {budget:,} "
                       f"(more than {ratio:.2g}x as many)"), f">{ratio:.2g}x"
    ratio = slow_steps / fast_steps
    if ratio == 1:
        faster = "the same"
    elif ratio > 1:
        faster = f"{fast} {ratio:.2g}x faster"
    else:
        faster = f"{slow} {1 / ratio:.2g}x faster"
    return ratio, f"{fast} took {fast_steps:,} steps, {slow} {slow_steps:,} ({faster})", f"{ratio:.2g}x"


def _fraction_words(name: str, kind: str, fraction: float, alarm: float) -> str:
    """A dead or saturated fraction as what it shows: none, some, or past the monitors' alarm."""
    words = f"{name}: a median {fraction:.1%} of {'units' if kind == 'dead' else 'outputs'} {kind} over the run"
    if fraction < NEGLIGIBLE:
        return words + f" (no {'dead units' if kind == 'dead' else 'saturation'} to speak of)."
    if fraction >= alarm:
        return words + f", past the monitors' {alarm:.0%} alarm."
    return words + f", below the monitors' {alarm:.0%} alarm."


def activations_conclusion(rows: list[dict[str, Any]], target: float, budget: int) -> tuple[list[str], dict[str, bool]]:
    """The conclusion lines and checks, computed from the table's rows only (``activation``,
    ``steps_to_target``, ``dead_fraction``, ``saturated_fraction``): each comparison with its
    actual ratio, each claim said to hold or not as the numbers show.

    Example
    -------
    >>> rows = [{"activation": a, "steps_to_target": s, "dead_fraction": None, "saturated_fraction": None}
    ...         for a, s in (("sigmoid", 900), ("tanh", 110), ("relu", 130))]
    >>> lines, checks = activations_conclusion(rows, 0.9, 3000)
    >>> lines[1]
    'relu against the saturating units: relu took 130 steps, tanh 110 (tanh 1.2x faster); relu took 130 steps, sigmoid 900 (relu 6.9x faster).'
    >>> checks["relu_several_times_faster_than_saturating"]
    False
    """
    steps = {r["activation"]: r["steps_to_target"] for r in rows}
    conclusion = [
        ", ".join(f"{r['activation']} {steps_words(r['steps_to_target'], budget)}" for r in rows)
        + f" to {target:.0%} validation accuracy (same net, seed, optimizer and batches).",
    ]
    ratios: dict[str, float | None] = {}
    words, short = [], []
    for slow in (name for name in SATURATING if name in steps and "relu" in steps):
        ratios[slow], text, ratio_text = _ratio_words("relu", steps["relu"], slow, steps[slow], budget)
        words.append(text)
        short.append(f"{slow} {ratio_text}")
    if words:
        conclusion.append("relu against the saturating units: " + "; ".join(words) + ".")
        several = {name: ratio is not None and ratio >= SEVERAL for name, ratio in ratios.items()}
        shown = ", ".join(short)
        if all(several.values()):
            verdict = "holds against every saturating unit here"
        elif any(several.values()):
            verdict = (f"holds against {', '.join(n for n, ok in several.items() if ok)} but not against "
                       f"{', '.join(n for n, ok in several.items() if not ok)} here")
        else:
            verdict = "does not hold here"
        conclusion.append(f"the claim that relu trains several times ({SEVERAL:g}x or more) faster than saturating "
                          f"units {verdict} (relu's speed-up in steps: {shown}).")
    # slowest first: a run that never reached the target is slower than any that did
    ranked = sorted(rows, key=lambda r: -(r["steps_to_target"] if r["steps_to_target"] is not None else math.inf))
    slowest, fastest = ranked[0], ranked[-1]
    if slowest["steps_to_target"] != fastest["steps_to_target"]:
        conclusion.append(f"slowest: {slowest['activation']} ({steps_words(slowest['steps_to_target'], budget)}); "
                          f"fastest: {fastest['activation']} ({steps_words(fastest['steps_to_target'], budget)}).")
    for r in rows:
        if r["dead_fraction"] is not None:
            conclusion.append(_fraction_words(r["activation"], "dead", r["dead_fraction"], DEAD_FRACTION))
        if r["saturated_fraction"] is not None:
            conclusion.append(_fraction_words(r["activation"], "saturated", r["saturated_fraction"], SATURATED_FRACTION))
    saturated = slowest["saturated_fraction"]
    if slowest["activation"] in SATURATING and saturated is not None and saturated < NEGLIGIBLE:
        conclusion.append(f"{slowest['activation']} was the slowest with almost none of its outputs saturated "
                          f"({saturated:.1%}): saturation does not explain its slowness here.")
    relu, sigmoid_steps, tanh = steps.get("relu"), steps.get("sigmoid"), steps.get("tanh")
    checks = {
        "relu_faster_than_sigmoid": relu is not None and (sigmoid_steps is None or relu < sigmoid_steps),
        "tanh_faster_than_sigmoid": tanh is not None and (sigmoid_steps is None or tanh < sigmoid_steps),
        "relu_several_times_faster_than_saturating": bool(ratios) and all(
            ratio is not None and ratio >= SEVERAL for ratio in ratios.values()),
    }
    return conclusion, checks
