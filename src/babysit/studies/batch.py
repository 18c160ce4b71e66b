"""Study ``batch``: full batch, single sample and mini-batches.

The claim (Bottou 1998/2010; Goodfellow, Bengio & Courville 2016, section 8.1.3;
CS231n "Neural Networks 3"): a full-batch gradient is exact but costs a pass over the
data for one step, so per epoch it makes the least progress; single-sample SGD takes a
step per example and makes the most progress per epoch, but each step uses the hardware
poorly, so per second it is slow; mini-batches sit between and reach a given loss in the
least wall time.

The same network (same initial weights) trains with plain SGD at the same learning rate
under each batch size; the loss over the whole training set is measured at every epoch
(and at fractions of an epoch for the smaller batches), with the clock stopped. The table
gives the epochs and the training seconds each needed to reach the target loss.
"""

from __future__ import annotations

from typing import Any

from babysit import data, nets
from babysit.config import DataSpec, ModelSpec, OptimizerSpec
from babysit.data.batching import Batches
from babysit.optim.optimizers import build_optimizer
from babysit.studies.common import Progress, StudyResult, seed_all, train_recorded
from babysit.studies.plots import curves_figure

LR, TARGET_LOSS = 0.05, 0.25


def batch_study(quick: bool = False, progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """Loss against epochs and wall time for batch sizes full, 1 and 32 (128 in the full study).

    Quick: digits, a 64-64-10 ReLU MLP, plain SGD at lr 0.05, target training loss 0.25;
    full batch gets at most 400 epochs (one step each), mini-batches 20, a single sample 4.
    """
    say = progress or (lambda line: None)
    splits = data.load(DataSpec(source="digits", split_seed=seed))
    scale = 1 if quick else 4
    # label -> (batch size, epochs at most, measurements per epoch)
    settings: dict[str, tuple[int | str, int, int]] = {
        "full batch": ("full", 400 * scale, 1),
        "single sample (1)": (1, 4 * scale, 8),
        "mini-batch 32": (32, 20 * scale, 4),
    }
    if not quick:
        settings["mini-batch 128"] = (128, 40 * scale, 2)
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for label, (batch_size, epochs, per_epoch) in settings.items():
        seed_all(seed)
        model = nets.build(ModelSpec(hidden=[64], activation="relu"), splits.input_shape, splits.num_classes)
        optimizer = build_optimizer(OptimizerSpec(name="sgd", lr=LR, momentum=0.0), model)
        steps_per_epoch = len(Batches(splits.train.x, splits.train.y, batch_size, None))
        curve = train_recorded(model, optimizer, splits.train, splits.val, batch_size=batch_size,
                               max_steps=epochs * steps_per_epoch, every=max(1, steps_per_epoch // per_epoch),
                               target_loss=TARGET_LOSS, seed=seed)
        rows.append({"batch": label, "steps_per_epoch": steps_per_epoch, "epochs_to_target": curve.reached_epoch,
                     "seconds_to_target": curve.reached_time, "steps_to_target": curve.reached_step,
                     "ms_per_epoch": 1000 * curve.seconds / max(curve.steps / steps_per_epoch, 1e-9),
                     "final_train_loss": curve.final_loss, "final_val_acc": curve.final_acc})
        curves[label] = curve.to_dict()
        reached = (f"loss {TARGET_LOSS} after {curve.reached_epoch:.3g} epochs, {curve.reached_time:.2f} s"
                   if curve.reached_step is not None else f"loss {curve.final_loss:.3g} after {epochs} epochs")
        say(f"batch: {label:<18} {reached}")

    conclusion, checks = batch_conclusion(rows)
    return StudyResult(
        name="batch",
        title="Batch size: full batch, single sample and mini-batches",
        claim="Per epoch, smaller batches make more progress; per second, mini-batches are fastest: a full batch "
              "takes one step per pass over the data, a single sample wastes the hardware on every step.",
        setup=f"digits, 64-64-10 ReLU MLP, plain SGD lr {LR} for every batch size, target training loss {TARGET_LOSS}, "
              f"seed {seed}; wall time is training time only (measuring excluded), one thread.",
        columns=[("batch", "batch"), ("steps_per_epoch", "steps / epoch"), ("epochs_to_target", "epochs to target"),
                 ("steps_to_target", "steps to target"), ("seconds_to_target", "seconds to target"),
                 ("ms_per_epoch", "ms / epoch"), ("final_train_loss", "final train loss"),
                 ("final_val_acc", "final val acc")],
        rows=rows, conclusion=conclusion, figures=_figures(curves), data={"curves": curves, "target_loss": TARGET_LOSS},
        checks=checks, quick=quick,
    )


def _figures(curves: dict[str, Any]) -> dict[str, Any]:
    def pick(x: str) -> dict[str, tuple[list[float], list[float]]]:
        return {name: ([p[x] for p in c["points"]], [p["loss"] for p in c["points"]]) for name, c in curves.items()}

    return {
        "batch_loss_epochs": curves_figure(pick("epoch"), "epochs", "training loss", log_y=True, log_x=True,
                                           hline=TARGET_LOSS, title="training loss against epochs"),
        "batch_loss_time": curves_figure(pick("time"), "training seconds", "training loss", log_y=True, log_x=True,
                                         hline=TARGET_LOSS, title="training loss against wall time"),
    }


def batch_conclusion(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, bool]]:
    """The conclusion lines and checks, computed from the table's rows only (``batch``,
    ``steps_per_epoch``, ``epochs_to_target``, ``seconds_to_target``, ``ms_per_epoch``,
    ``final_train_loss``): the batch sizes ranked by epochs and by seconds to the target, and
    whether that is the order the claim expects.

    Example
    -------
    >>> def r(batch, steps, epochs, seconds):
    ...     return {"batch": batch, "steps_per_epoch": steps, "epochs_to_target": epochs,
    ...             "seconds_to_target": seconds, "ms_per_epoch": 1.0, "final_train_loss": 0.2}
    >>> rows = [r("full batch", 1, 150, 0.2), r("single sample (1)", 1294, 1.5, 0.5), r("mini-batch 32", 41, 3.7, 0.05)]
    >>> batch_conclusion(rows)[0][2]
    'least wall time to the target: mini-batch 32 (0.05 s), full batch (0.2 s), single sample (1) (0.5 s).'
    """
    by = {r["batch"]: r for r in rows}
    full, single, mini = by["full batch"], by["single sample (1)"], by["mini-batch 32"]

    def when(r: dict[str, Any]) -> str:
        if r["epochs_to_target"] is None:
            return f"{r['batch']} did not get there (loss {r['final_train_loss']:.3g})"
        return f"{r['batch']} in {r['epochs_to_target']:.3g} epochs ({r['seconds_to_target']:.2g} s)"

    def ranked(key: str, unit: str, fmt: str) -> str:
        done = sorted((r for r in rows if r[key] is not None), key=lambda r: r[key])
        never = [r["batch"] for r in rows if r[key] is None]
        text = ", ".join(f"{r['batch']} ({r[key]:{fmt}} {unit})" for r in done)
        return text + (f"; not reached: {', '.join(never)}" if never else "")

    def less(a: Any, b: Any) -> bool:  # a reached target and (b did not, or a is smaller)
        return a is not None and (b is None or a < b)

    checks = {
        "mini_fewer_epochs_than_full": less(mini["epochs_to_target"], full["epochs_to_target"]),
        "mini_less_time_than_full": less(mini["seconds_to_target"], full["seconds_to_target"]),
        "single_fewest_epochs": less(single["epochs_to_target"], mini["epochs_to_target"]),
        "mini_less_time_than_single": less(mini["seconds_to_target"], single["seconds_to_target"]),
    }
    conclusion = [
        f"To a training loss of {TARGET_LOSS} with plain SGD at lr {LR}: " + "; ".join(when(r) for r in rows) + ".",
        f"fewest epochs to the target: {ranked('epochs_to_target', 'epochs', '.3g')}.",
        f"least wall time to the target: {ranked('seconds_to_target', 's', '.2g')}.",
        f"per epoch: full batch takes {full['steps_per_epoch']:,} step{'s' * (full['steps_per_epoch'] != 1)}, "
        f"mini-batches of 32 take {mini['steps_per_epoch']:,}, a single sample {single['steps_per_epoch']:,}; an "
        f"epoch cost {full['ms_per_epoch']:.3g} ms, {mini['ms_per_epoch']:.3g} ms and {single['ms_per_epoch']:.3g} ms.",
    ]
    per_epoch = checks["single_fewest_epochs"] and checks["mini_fewer_epochs_than_full"]
    per_second = checks["mini_less_time_than_full"] and checks["mini_less_time_than_single"]
    conclusion.append(
        ("per epoch, the smaller batch made more progress, as the claim expects; " if per_epoch else
         "per epoch, the smaller batch did not always make more progress here; ")
        + ("per second, mini-batches of 32 were the fastest, as the claim expects." if per_second else
           "per second, mini-batches of 32 were not the fastest here (timing depends on the machine; see the table)."))
    return conclusion, checks
