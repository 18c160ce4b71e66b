"""Study ``normalization``: how large a learning rate each normalization tolerates.

The claim (Ioffe & Szegedy 2015, section 3.3: "Batch Normalization enables higher learning
rates"; Ba et al. 2016 for layer norm, Wu & He 2018 for group norm, Salimans & Kingma 2016
for weight norm): normalizing the pre-activations keeps a layer's scale independent of
its weights' scale, so a step that would blow up an unnormalized net only rescales the
weights of a normalized one, and larger learning rates train.

Each normalization trains the same deep MLP from the same seed with SGD and momentum at
learning rates spaced evenly in log space. A rate is stable when the run neither diverges
(a loss above 3x the first or non-finite, the explosion guard's rule) nor ends above half
its initial loss (it learned something). The table gives the largest stable rate, the validation accuracy reached
there, and the best validation accuracy over the sweep.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from babysit import data, nets
from babysit.config import DataSpec, ModelSpec, OptimizerSpec
from babysit.optim.optimizers import build_optimizer
from babysit.studies.common import Progress, StudyResult, seed_all, train_recorded
from babysit.studies.plots import curves_figure

NORMS = ("none", "batch", "layer", "group", "weight")
# A rate is stable when its run ends below this fraction of its initial loss without
# diverging: a run that merely does not blow up but learns nothing (a loss stuck near
# ln 10 on ten classes) does not count.
STABLE_FRACTION = 0.5


def normalization_study(quick: bool = False, progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """The largest stable learning rate and the accuracy per normalization.

    Quick: digits, a 6-layer ReLU MLP of width 64, momentum 0.9, batches of 64, 120 steps per
    rate, rates 10^-2 .. 10^1 in half decades. Full: 600 steps, rates 10^-3 .. 10^1.5.
    """
    say = progress or (lambda line: None)
    splits = data.load(DataSpec(source="digits", split_seed=seed))
    if quick:
        lrs, steps, every = np.logspace(-2, 1, 7), 120, 20
    else:
        lrs, steps, every = np.logspace(-3, 1.5, 10), 600, 50
    lrs = [float(f"{lr:.3g}") for lr in lrs]
    hidden = [64] * 6
    rows: list[dict[str, Any]] = []
    sweeps: dict[str, Any] = {}
    for norm in NORMS:
        sweep = []
        for lr in lrs:
            seed_all(seed)
            model = nets.build(ModelSpec(hidden=hidden, activation="relu", norm=norm, groups=4),
                               splits.input_shape, splits.num_classes)
            optimizer = build_optimizer(OptimizerSpec(name="momentum", lr=lr, momentum=0.9), model)
            curve = train_recorded(model, optimizer, splits.train, splits.val, batch_size=64, max_steps=steps,
                                   every=every, seed=seed)
            first = curve.points[0]["loss"]
            stable = not curve.diverged and math.isfinite(curve.final_loss) and curve.final_loss < STABLE_FRACTION * first
            sweep.append({"lr": lr, "stable": stable, "final_loss": curve.final_loss, "val_acc": curve.final_acc,
                          "diverged": curve.diverged})
        sweeps[norm] = sweep
        stable = [s for s in sweep if s["stable"]]
        largest = max(stable, key=lambda s: s["lr"]) if stable else None
        best = max(stable, key=lambda s: s["val_acc"]) if stable else None
        rows.append({"norm": norm, "largest_stable_lr": largest["lr"] if largest else None,
                     "val_acc_at_largest": largest["val_acc"] if largest else None,
                     "best_val_acc": best["val_acc"] if best else None, "best_lr": best["lr"] if best else None,
                     "stable_rates": f"{len(stable)} of {len(sweep)}"})
        say(f"normalization: {norm:<6} largest stable lr {largest['lr'] if largest else 'none'}"
            f", best validation accuracy {best['val_acc']:.1%} at lr {best['lr']}" if best else
            f"normalization: {norm:<6} no stable lr")

    conclusion, checks = normalization_conclusion(rows)
    return StudyResult(
        name="normalization",
        title="Normalization: the largest stable learning rate",
        claim="Normalization lets a network train at higher learning rates (Ioffe & Szegedy 2015, section 3.3).",
        setup=f"digits, 6-layer ReLU MLP of width 64 (kaiming), SGD momentum 0.9, batch 64, {steps} steps per rate, "
              f"rates {', '.join(f'{lr:g}' for lr in lrs)}; stable: no divergence (3x the first loss, or non-finite) "
              f"and a final training loss below half the initial one; group norm with 4 groups; seed {seed}.",
        columns=[("norm", "norm"), ("largest_stable_lr", "largest stable lr"),
                 ("val_acc_at_largest", "val acc there"), ("best_val_acc", "best val acc"), ("best_lr", "at lr"),
                 ("stable_rates", "stable rates")],
        rows=rows, conclusion=conclusion, figures=_figures(sweeps), data={"sweeps": sweeps, "lrs": lrs},
        checks=checks, quick=quick,
    )


def _figures(sweeps: dict[str, Any]) -> dict[str, Any]:
    loss = {norm: ([s["lr"] for s in sweep], [s["final_loss"] if s["stable"] else math.nan for s in sweep])
            for norm, sweep in sweeps.items()}
    accuracy = {norm: ([s["lr"] for s in sweep], [s["val_acc"] if s["stable"] else math.nan for s in sweep])
                for norm, sweep in sweeps.items()}
    return {
        "normalization_loss_lr": curves_figure(loss, "learning rate", "final training loss (stable runs)",
                                               log_x=True, log_y=True, title="final loss against learning rate"),
        "normalization_accuracy_lr": curves_figure(accuracy, "learning rate", "validation accuracy (stable runs)",
                                                   log_x=True, title="validation accuracy against learning rate"),
    }


def normalization_conclusion(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, bool]]:
    """The conclusion lines and checks, computed from the table's rows only (``norm``,
    ``largest_stable_lr``, ``best_val_acc``, ``best_lr``): each normalization's largest stable
    rate against the unnormalized net's, as a ratio, with the direction it went.

    Example
    -------
    >>> rows = [{"norm": n, "largest_stable_lr": lr, "best_val_acc": 0.9, "best_lr": 0.01}
    ...         for n, lr in (("none", 0.3), ("batch", 0.03), ("layer", 0.3))]
    >>> print(normalization_conclusion(rows)[0][1])
    batch norm's largest stable rate, 0.03, is 0.1x the largest without normalization (0.3): lower, not the higher rate Ioffe & Szegedy 2015 report.
    """
    by = {r["norm"]: r for r in rows}
    none_lr = by["none"]["largest_stable_lr"]
    conclusion = ["largest stable learning rate: " + ", ".join(
        f"{r['norm']} {r['largest_stable_lr']:g}" if r["largest_stable_lr"] else f"{r['norm']} none" for r in rows) + "."]
    for r in rows:
        if r["norm"] == "none":
            continue
        lr, name = r["largest_stable_lr"], f"{r['norm']} norm"
        if not lr:
            line = f"{name}: no rate was stable" + (f", where without normalization {none_lr:g} was." if none_lr else ".")
        elif not none_lr:
            line = f"{name} trained stably up to lr {lr:g}; without normalization no rate was stable."
        elif lr > none_lr:
            line = f"{name} trained stably at lr {lr:g}, {lr / none_lr:.3g}x the largest rate without normalization ({none_lr:g})."
        elif lr == none_lr:
            line = f"{name}'s largest stable rate is the same as without normalization ({lr:g})."
        else:
            line = f"{name}'s largest stable rate, {lr:g}, is {lr / none_lr:.3g}x the largest without normalization ({none_lr:g}): lower."
        if r["norm"] == "batch":
            line = line.rstrip(".") + (", as Ioffe & Szegedy 2015 report." if lr and (not none_lr or lr > none_lr) else
                                       ", not the higher rate Ioffe & Szegedy 2015 report.")
        conclusion.append(line)
    conclusion.append("best validation accuracy: " + ", ".join(
        f"{r['norm']} {r['best_val_acc']:.1%} (lr {r['best_lr']:g})" for r in rows if r["best_val_acc"] is not None) + ".")
    checks = {"batch_tolerates_larger_lr": (by["batch"]["largest_stable_lr"] or 0.0) > (none_lr or 0.0),
              "layer_tolerates_larger_lr": (by["layer"]["largest_stable_lr"] or 0.0) > (none_lr or 0.0)}
    return conclusion, checks
