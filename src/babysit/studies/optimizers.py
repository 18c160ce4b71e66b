"""Study ``optimizers``: the same small problem under every optimizer babysit has.

The claims: momentum (Polyak 1964; Sutskever et al. 2013) and the adaptive methods (Adam,
Kingma & Ba 2015; RMSprop, Tieleman & Hinton 2012) lower the loss faster per step than
plain gradient descent; second-order methods (L-BFGS, Newton) take far fewer but far
dearer steps, so against wall time they lose part of their lead; Quickprop (Fahlman 1988)
speeds plain gradient descent up with a per-weight parabola. And Wilson et al. (2017),
"The Marginal Value of Adaptive Gradient Methods": adaptive methods can reach a lower
training loss yet generalise worse than SGD; the study reports the test accuracy of each.

Every optimizer trains the same network from the same initial weights on the full
training set (one step is one full-batch update: Newton, L-BFGS and Quickprop are
full-batch methods, and it keeps the comparison per step exact). Newton builds the exact
Hessian, so the network is small (under 5,000 parameters). The learning rates are the
usual ones for each method, not tuned per method on this problem. One L-BFGS step is
torch's ``LBFGS.step``: up to 20 iterations with a line search, each a full-batch pass.
"""

from __future__ import annotations

import math
from typing import Any

from babysit import data, nets
from babysit.config import DataSpec, ModelSpec, OptimizerSpec
from babysit.optim.optimizers import build_optimizer
from babysit.studies.common import Progress, StudyResult, seed_all, steps_words, train_recorded
from babysit.studies.plots import curves_figure

SAMPLES, HIDDEN = 900, [32]  # CS231n's 3-arm spiral; 2-32-3 tanh: 195 parameters, a 195x195 Hessian
TARGET_LOSS = 0.1  # steps and seconds to this training loss are noted (the run goes on)
CONVERGED_LOSS = 0.01  # a run stops here: converged (Newton and L-BFGS get there in a few dear steps)

# name -> (optimizer.name, lr, extra spec keys)
OPTIMIZERS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "sgd": ("sgd", 0.1, {"momentum": 0.0}),
    "momentum": ("momentum", 0.1, {"momentum": 0.9}),
    "nesterov": ("nesterov", 0.1, {"momentum": 0.9}),
    "adam": ("adam", 0.01, {}),
    "adamw": ("adamw", 0.01, {"weight_decay": 0.01}),
    "rmsprop": ("rmsprop", 0.01, {}),
    "lbfgs": ("lbfgs", 1.0, {}),
    "newton": ("newton", 1.0, {"damping": 1e-3}),
    "quickprop": ("quickprop", 0.1, {"max_growth": 1.75}),
}


def optimizers_study(quick: bool = False, progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """Loss against steps and wall time, steps and seconds to a training loss of 0.1, and
    test accuracy, per optimizer.

    Quick: CS231n's spiral (3 arms, 900 points), a 2-32-3 tanh MLP (195 parameters), at
    most 200 full-batch steps (a run stops once its loss is below 0.01). Full: 1,000 steps.
    """
    say = progress or (lambda line: None)
    steps = 200 if quick else 1000
    every = 5 if quick else 10
    splits = data.load(DataSpec(source="spirals", samples=SAMPLES, split_seed=seed))
    model_spec = ModelSpec(hidden=HIDDEN, activation="tanh")
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for label, (name, lr, extra) in OPTIMIZERS.items():
        seed_all(seed)
        model = nets.build(model_spec, splits.input_shape, splits.num_classes)
        optimizer = build_optimizer(OptimizerSpec(name=name, lr=lr, **extra), model)
        curve = train_recorded(model, optimizer, splits.train, splits.val, batch_size="full", max_steps=steps,
                               every=every, target_loss=TARGET_LOSS, stop_at_target=False, stop_loss=CONVERGED_LOSS,
                               seed=seed, test=splits.test)
        at_target = next((p for p in curve.points if p["step"] == curve.reached_step), None)
        rows.append({"optimizer": label, "lr": lr, "steps_to_target": curve.reached_step,
                     "seconds_to_target": curve.reached_time, "steps": curve.steps,
                     "final_train_loss": curve.final_loss, "train_seconds": curve.seconds,
                     "ms_per_step": 1000 * curve.seconds / max(curve.steps, 1), "val_acc": curve.final_acc,
                     "test_acc": curve.points[-1]["test_acc"],
                     "test_acc_at_target": at_target["test_acc"] if at_target else None, "diverged": curve.diverged})
        curves[label] = curve.to_dict()
        say(f"optimizers: {label:<9} train loss {curve.final_loss:.4f} after {curve.steps} steps "
            f"({curve.seconds:.2f} s), test accuracy {curve.points[-1]['test_acc']:.1%}")

    conclusion, checks = optimizers_conclusion(rows, len(splits.test))
    parameters = sum(p.numel() for p in nets.build(model_spec, splits.input_shape, splits.num_classes).parameters())
    return StudyResult(
        name="optimizers",
        title="Optimizers on one small problem: loss against steps and wall time",
        claim="Momentum and adaptive methods lower the loss faster per step than plain SGD; second-order methods "
              "take fewer but dearer steps; adaptive methods may generalise worse than SGD (Wilson et al. 2017).",
        setup=f"spirals ({SAMPLES} points, 3 arms), 2-32-3 tanh MLP ({parameters:,} parameters), full batch, at most "
              f"{steps} steps (stopping once the loss is below {CONVERGED_LOSS}; an lbfgs step is up to 20 iterations with a "
              f"line search), seed {seed}; wall time is training time only (measuring excluded).",
        columns=[("optimizer", "optimizer"), ("lr", "lr"), ("steps_to_target", f"steps to loss {TARGET_LOSS}"),
                 ("seconds_to_target", f"seconds to loss {TARGET_LOSS}"), ("steps", "steps run"),
                 ("final_train_loss", "final train loss"),
                 ("train_seconds", "seconds"), ("ms_per_step", "ms / step"), ("val_acc", "val acc"),
                 ("test_acc", "test acc"), ("test_acc_at_target", f"test acc at loss {TARGET_LOSS}"),
                 ("diverged", "diverged")],
        rows=rows, conclusion=conclusion, figures=_figures(curves), data={"curves": curves}, checks=checks, quick=quick,
    )


ADAPTIVE, SGD_FAMILY = ("adam", "adamw", "rmsprop"), ("sgd", "momentum", "nesterov")
FIRST_ORDER = (*SGD_FAMILY, *ADAPTIVE, "quickprop")
SECOND_ORDER = ("newton", "lbfgs")


def _times(a: float, b: float) -> str:
    """``a`` against ``b`` as 'N x lower' or 'N x higher' (or 'the same')."""
    if a == b:
        return "the same"
    return f"{b / a:.3g}x lower" if a < b else f"{a / b:.3g}x higher"


def optimizers_conclusion(rows: list[dict[str, Any]], test_examples: int) -> tuple[list[str], dict[str, bool]]:
    """The conclusion lines and checks, computed from the table's rows only (``optimizer``,
    ``steps_to_target``, ``seconds_to_target``, ``steps``, ``final_train_loss``,
    ``ms_per_step``, ``test_acc``, ``test_acc_at_target``): every comparison with its ratio
    and its direction as measured.

    Example
    -------
    >>> rows = [{"optimizer": n, "steps_to_target": t, "seconds_to_target": None, "steps": 200,
    ...          "final_train_loss": loss, "ms_per_step": ms, "test_acc": 0.9, "test_acc_at_target": None}
    ...         for n, t, loss, ms in (("sgd", None, 0.1, 0.5), ("momentum", None, 0.4, 0.5), ("adam", None, 0.05, 0.5),
    ...                                ("newton", None, 0.2, 80.0))]
    >>> lines, checks = optimizers_conclusion(rows, 180)
    >>> lines[1]
    'training loss after the same budget: sgd 0.1 after 200 steps; momentum 0.4 after 200 steps (4x higher than sgd), adam 0.05 after 200 steps (2x lower than sgd).'
    >>> checks["momentum_beats_sgd"], checks["adam_beats_sgd"]
    (False, True)
    """
    by = {r["optimizer"]: r for r in rows}
    sgd = by["sgd"]
    target = TARGET_LOSS
    conclusion = [
        f"Full-batch steps to a training loss of {target}: "
        + ", ".join(f"{r['optimizer']} {steps_words(r['steps_to_target'], r['steps'])}"
                    + (f" ({r['seconds_to_target']:.2g} s)" if r["seconds_to_target"] is not None else "")
                    for r in rows) + ".",
    ]
    others = [by[n] for n in ("momentum", "nesterov", "adam", "rmsprop") if n in by]
    conclusion.append(
        f"training loss after the same budget: sgd {sgd['final_train_loss']:.3g} after {sgd['steps']} steps; "
        + ", ".join(f"{r['optimizer']} {r['final_train_loss']:.3g} after {r['steps']} steps "
                    f"({_times(r['final_train_loss'], sgd['final_train_loss'])} than sgd)" for r in others) + ".")
    lowest = min(rows, key=lambda r: r["final_train_loss"])
    conclusion.append(f"lowest training loss: {lowest['optimizer']} ({lowest['final_train_loss']:.3g} after "
                      f"{lowest['steps']} steps).")
    reached = {r["optimizer"]: r for r in rows if r["steps_to_target"] is not None}
    first = [reached[n] for n in FIRST_ORDER if n in reached]
    second = [reached[n] for n in SECOND_ORDER if n in reached]
    fewer_steps = dearer = False
    if first and second:
        quickest = min(first, key=lambda r: r["steps_to_target"])
        parts = []
        for r in second:
            fewer = r["steps_to_target"] < quickest["steps_to_target"]
            fewer_steps = fewer_steps or fewer
            dearer = dearer or r["ms_per_step"] > quickest["ms_per_step"]
            parts.append(f"{r['optimizer']} {r['steps_to_target']:,} steps at {r['ms_per_step']:.3g} ms each "
                         f"({'fewer' if fewer else 'no fewer'} steps, {r['ms_per_step'] / quickest['ms_per_step']:.3g}x "
                         "the time per step)")
        in_time = min(reached.values(), key=lambda r: r["seconds_to_target"])
        conclusion.append(
            f"to a loss of {target}, the quickest first-order method, {quickest['optimizer']}, took "
            f"{quickest['steps_to_target']:,} steps at {quickest['ms_per_step']:.3g} ms each; " + "; ".join(parts)
            + f". Least wall time to it: {in_time['optimizer']} ({in_time['seconds_to_target']:.2g} s).")
    else:
        conclusion.append(f"the second-order methods cannot be compared in steps to a loss of {target}: "
                          + ("no first-order method" if not first else "no second-order method") + " reached it.")
    conclusion.append("final test accuracy: " + ", ".join(
        f"{name} {by[name]['test_acc']:.1%}" for name in ("sgd", "momentum", "adam") if name in by) + ".")
    conclusion.append(_generalisation_line(by, test_examples))
    checks = {
        "momentum_beats_sgd": by["momentum"]["final_train_loss"] < sgd["final_train_loss"],
        "adam_beats_sgd": by["adam"]["final_train_loss"] < sgd["final_train_loss"],
        "newton_fewer_steps": by["newton"]["final_train_loss"] < sgd["final_train_loss"],
        "second_order_fewer_but_dearer_steps": fewer_steps and dearer,
    }
    return conclusion, checks


def _generalisation_line(by: dict[str, dict[str, Any]], test_examples: int) -> str:
    """Wilson et al. 2017 compared test accuracy at equal training loss: here, the test
    accuracy measured when each run's training loss first reached TARGET_LOSS. A difference
    within two binomial standard errors of the test set is called no difference."""
    def mean_at_target(names: tuple[str, ...]) -> tuple[float | None, list[str]]:
        reached = [n for n in names if n in by and by[n]["test_acc_at_target"] is not None]
        if not reached:
            return None, reached
        return sum(by[n]["test_acc_at_target"] for n in reached) / len(reached), reached

    adaptive, adaptive_names = mean_at_target(ADAPTIVE)
    plain, plain_names = mean_at_target(SGD_FAMILY)
    if adaptive is None or plain is None:
        return (f"at equal training loss ({TARGET_LOSS}) the generalisation of adaptive and SGD-type methods cannot "
                "be compared here: not both kinds reached it.")
    noise = 2 * math.sqrt(max(plain * (1 - plain), 1 / test_examples) / test_examples)
    if abs(adaptive - plain) <= noise:
        verdict = (f"no clear difference (within two standard errors, {noise:.1%}, of {test_examples} test "
                   "examples): Wilson et al.'s gap does not show on this problem")
    elif adaptive < plain:
        verdict = "adaptive lower, the gap Wilson et al. 2017 report"
    else:
        verdict = "adaptive higher: Wilson et al.'s gap does not show on this problem"
    return (f"test accuracy when the training loss first reached {TARGET_LOSS}: adaptive methods "
            f"({', '.join(adaptive_names)}) {adaptive:.1%} on average, SGD-type ({', '.join(plain_names)}) "
            f"{plain:.1%}: {verdict}.")


def _figures(curves: dict[str, Any]) -> dict[str, Any]:
    def pick(x: str) -> dict[str, tuple[list[float], list[float]]]:
        return {name: ([p[x] for p in c["points"]], [p["loss"] for p in c["points"]]) for name, c in curves.items()}

    return {
        "optimizers_loss_steps": curves_figure(pick("step"), "full-batch steps", "training loss", log_y=True,
                                               title="training loss against steps"),
        "optimizers_loss_time": curves_figure(pick("time"), "training seconds", "training loss", log_y=True,
                                              log_x=True, title="training loss against wall time"),
    }
