"""Diagnosis after the run: what the learning curves (and the monitors) say went wrong.

References: CS231n, "Neural Networks Part 3: Learning and Evaluation", section
"Babysitting the learning process" (Karpathy): the shapes of the loss curve for a very
high, high, good and low learning rate; the gap between training and validation accuracy
as the measure of overfitting; the update/weight ratio ``||Δw|| / ||w||`` near 1e-3.
Prechelt (1998), "Early stopping - but when?" for the generalisation loss
``GL = E_val / min(E_val) - 1``, the relative rise of the validation loss over its minimum.

Five findings, each a small function below with its thresholds next to their reference:

- ``lr_too_high`` (warning): the run diverged (the explosion guard's stop reason, a NaN
  loss), the training loss went up and stayed up, it bounced from epoch to epoch at a
  constant lr, it settled at the chance loss (learned nothing), or the typical layer's
  update/weight ratio was above 1e-1.
- ``lr_too_low`` (warning): the loss was still falling at the end but had barely moved
  from the chance loss, or it was still falling and the typical layer's update/weight
  ratio was a decade or more below the healthy 1e-3, or that ratio was two decades below
  while the network had not fitted its training set.
- ``not_converged`` (warning): the run used all its epochs and the loss was still clearly
  falling over the last quarter of them.
- ``overfitting``: the validation loss rose well above its minimum while the training loss
  kept falling. A warning when the kept weights are the overfit last ones (no early
  stopping); info when early stopping kept the best epoch's. A large train/validation gap
  alone, with validation no longer getting worse, is info too.
- ``underfitting`` (info): a run that converged with training and validation loss both
  poor and close together. A healthy run of a small model, so advice rather than a fault.

Losses are put on one scale by a *reference*: the chance loss (the loss of a constant
guess: ln C for softmax over C balanced classes, the targets' variance for MSE) when it is
known, else the loss of the first batch, else the first epoch's training loss.

The thresholds were calibrated on every spec in examples/ (none may get a warning) and
on a pathology suite: MNIST-1D MLPs with SGD at lr 3, 1, 1e-3, 1e-4 and 1e-5, Adam at
1, 0.1 and 1e-5, a [512, 512] MLP on 200 examples with and without early stopping,
logistic regression on MNIST-1D and on spirals, spirals MLPs at lr 10, 2 and 1e-4, and
runs cut off after 5 or 10 epochs.

Example
-------
>>> history = [{"epoch": e, "step": 10 * e, "lr": 0.1, "train_loss": 2.3 - 0.02 * e,
...             "val_loss": 2.3 - 0.02 * e} for e in range(1, 21)]
>>> [(f.id, f.severity) for f in diagnose(history, chance_loss=2.30, epochs_planned=20)]
[('lr_too_low', 'warning'), ('not_converged', 'warning')]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babysit import config as config_module
from babysit import data as data_module
from babysit.checks.findings import Finding
from babysit.checks.monitors import monitor_summary
from babysit.errors import BabysitError
from babysit.optim import losses
from babysit.rundir import read_json, read_jsonl

# --------------------------------------------------------------------------- thresholds
# Measured on the calibration runs (module docstring); "ref" is the reference loss.

# A trend needs a few epochs: fewer than TREND_MIN_EPOCHS say nothing about a slope. The
# trend window is the last quarter of the run, at least TREND_MIN_WINDOW epochs.
TREND_MIN_EPOCHS = 4
TREND_MIN_WINDOW = 5
# "Still clearly falling": the slope over the window stands out of the epoch-to-epoch noise
# (t statistic <= -FALL_T; the examples, all converged, have t from -2.4 to +2.5) and is
# large: the fitted loss fell by at least FALL_MIN of its level over the window, or it is
# still falling at FALL_RATE or more of the run's average pace (a slow, steady descent over
# a short window). The runs stopped at their epoch limit while still improving fell 2.7-16%
# over their last quarter (SGD lr 1e-3 / 1e-4 / 1e-5, spirals at lr 1e-4, runs cut at 5 or
# 10 epochs); SGD at lr 1e-5 cut at 12 epochs fell 2.0% over its last 5, at 0.9 of its
# average pace. A converged run's window pace is a few % of its average.
FALL_MIN = 0.02
FALL_RATE = 0.25
FALL_T = 3.0
# A run still falling, but at under PLATEAU_PACE of its average pace, is on a plateau: more
# epochs would gain little, which is worth saying but not a warning. The digits MLP (Adam
# 1e-3, 30 epochs) fell from 0.213 to 0.203 over its last 8 epochs at 2% of its average pace,
# the autoencoder example 2% over its last 38 at 1%; runs cut off halfway fall at 0.9 of it.
PLATEAU_PACE = 0.1
# The drop is relative to the loss level, but never to less than FALL_FLOOR x ref: a loss
# near zero (a memorised training set) keeps halving smoothly, which is convergence, not
# an unfinished run. The examples' validation losses sit at 0.04-0.4 ref.
FALL_FLOOR = 0.05
# End-of-run levels are the median of the last END_FRACTION of the epochs (at least
# END_MIN_EPOCHS): one noisy epoch must not decide a finding.
END_FRACTION = 0.1
END_MIN_EPOCHS = 3

# --- lr_too_high
# CS231n, loss shapes: "very high learning rate" makes the loss go up. A training loss whose
# end level is 20% and 0.1 ref above its minimum went up (spirals at SGD lr 2: +131%,
# 0.56 ref; the MNIST-1D MLP at SGD lr 0.3: +30%, 0.14 ref). The examples end at most
# 0.023 ref above their minimum, the working runs with the highest lrs (spirals at SGD lr 1,
# Adam at 0.03-0.05) at most 0.032 ref; near-zero losses rise by large factors (mnist1d-cnn:
# 0.004 -> 0.03) without meaning anything, hence the absolute floor.
TRAIN_RISE_RELATIVE = 0.20
TRAIN_RISE_ABSOLUTE = 0.10
# CS231n: a too-high learning rate also makes the loss bounce. Over the last half of the
# run, at a constant lr (max/min lr <= CONSTANT_LR_RATIO; a cyclic schedule bounces by
# design), a median epoch-to-epoch change of 0.05 ref with at least a third of the changes
# upward is bouncing. That is 2.5x the bounciest run that still trained well (spirals at
# SGD lr 1: 0.019 ref; the examples: <= 0.006 ref). It catches a loss that jumps up and down
# without a net rise, which the rise rule (levels, not jumps) can miss; in the calibration
# runs the rise rule caught every bouncing one first (spirals at lr 2: 0.018 ref).
BOUNCE_ABSOLUTE = 0.05
BOUNCE_UP_FRACTION = 1 / 3
CONSTANT_LR_RATIO = 1.5
# Settled at the chance loss: the best training loss of the run is within [AT_CHANCE,
# AT_CHANCE_HIGH] x the chance loss and not falling: the network learned nothing beyond the
# class frequencies (or the targets' mean). The chance loss is that of the best constant
# output on the training set, so a network whose output no longer depends on its input sits
# at or just above it (the output bias still learns the constant): SGD at lr 1 and 3 killed
# every ReLU of the MNIST-1D MLP in the first epoch and sat at 1.002 and 1.013 x ln 10.
# Anything that learned a little is below: a linear model on targets with no linear signal
# at 0.97, logistic regression on MNIST-1D at 0.69. Far above chance (SGD at lr 1e-5 starts
# at 1.3) the network has not got anywhere yet, which is the low-lr shape, not this one.
AT_CHANCE = 0.99
AT_CHANCE_HIGH = 1.05
# CS231n: ||Δw|| / ||w|| "should be somewhere around 1e-3". Two decades above (the same
# alarm as the monitors' update_ratio_high) in the typical layer (the median over layers,
# since the lr is one knob for every layer) is too high. The examples' typical layers sit
# at 2e-4 (resnet, adamw 3e-3) to 1e-2 (mlp, adamw 1e-2).
RATIO_HIGH = 1e-1

# --- lr_too_low
# CS231n, loss shapes: a "low learning rate" makes the loss fall slowly and steadily. Two
# ways to tell slow from merely unfinished, when the loss is still falling at the end:
# - the loss has barely left the chance level after LOW_MIN_EPOCHS epochs: it is at least
#   LOW_PROGRESS of the reference (SGD at 1e-5 and 1e-4: 1.15 and 0.88 ln 10 after 50
#   epochs, Adam at 1e-5: 0.83 after 196; healthy runs are at 0.73 or below by epoch 5,
#   logistic regression being the slowest);
# - the typical layer's update/weight ratio is a decade or more below CS231n's 1e-3
#   (SGD at 1e-4: 3e-5, at 1e-5: 8e-6; spirals at 1e-4: 5e-5; SGD at 1e-3, where a
#   longer run is the better fix: 1.3e-4).
LOW_PROGRESS = 0.8
LOW_MIN_EPOCHS = 10
RATIO_LOW_FALLING = 1e-4
# Two decades below 1e-3 (the monitors' update_ratio_low) is too low even when the loss has
# flattened, unless the network has fitted its training set (loss below FITTED x ref), where
# tiny steps are what convergence looks like (a [512, 512] MLP that memorised 200 examples
# takes steps of 3e-5 to 2e-4). A ratio of exactly 0 is no gradient at all (dead units), not
# a small learning rate.
RATIO_LOW = 1e-5
FITTED = 0.1

# --- overfitting
# Prechelt (1998): generalisation loss GL = E_val / min E_val - 1; his stopping rules fire
# at GL of 1-5%. After the fact we call the validation loss "getting worse" at GL >= 10%
# and 0.05 ref: the noisiest example (mnist1d-mlp) ends 4-6% above its minimum; small
# validation losses (mnist1d-cnn, 0.17) end 30-50% above by noise alone (0.02-0.04 ref),
# hence the absolute floor. The default spec rises 20% (0.11 ref) after epoch 7, the big
# net on 200 examples 114% (1.1 ref).
VAL_RISE_RELATIVE = 0.10
VAL_RISE_ABSOLUTE = 0.05
# The training loss kept falling: its end level is at most TRAIN_KEPT_FALLING of its value
# at the validation minimum.
TRAIN_KEPT_FALLING = 0.95
# CS231n: "the gap between the training and validation accuracy indicates the amount of
# overfitting". Measured on the kept weights in eval mode (summary.json) as a loss gap, so
# it works for regression too: 0.15 ref (mnist1d-mlp: 0.27 ref, accuracy 95% vs 72%; the
# other examples: 0.03-0.07 ref, within 5 points of accuracy).
GAP_LARGE = 0.15

# --- underfitting
# "Both poor and close": the kept model's training loss is at least POOR x ref (logistic
# regression on MNIST-1D: 0.69, on spirals: 0.67; the examples with hidden layers: < 0.1)
# and validation is within CLOSE x ref of it (logistic regression: 0.04 and 0.01).
POOR = 0.5
CLOSE = 0.10

_DIVERGED_REASONS = ("loss_exploded", "nonfinite_loss")


# --------------------------------------------------------------------------- helpers


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null in JSON, NaN, inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2g}"


def _pct(value: float) -> str:
    return f"{value:.0%}"


@dataclass
class _Trend:
    """A least-squares line through the last quarter of a loss series."""

    first_epoch: int
    last_epoch: int
    start: float  # fitted value at the window's first epoch
    end: float  # fitted value at its last epoch
    drop: float  # (start - end) / start
    t: float  # slope / standard error of the slope
    epochs: int  # finite points in the window
    pace: float  # the window's slope / the run's average slope (first point to fitted end)

    @property
    def falling(self) -> bool:
        return self.t <= -FALL_T and (self.drop >= FALL_MIN or self.pace >= FALL_RATE)


def _trend(epochs: Sequence[int], values: Sequence[float | None], floor: float = 0.0) -> _Trend | None:
    """The fitted trend of ``values`` over the last quarter of the run (finite points only);
    the drop is taken relative to the fitted start, or to ``floor`` when that is larger."""
    points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
    if len(points) < TREND_MIN_EPOCHS:
        return None
    window = points[-min(len(points), max(TREND_MIN_WINDOW, math.ceil(len(points) / 4))):]
    xs = [float(e) for e, _ in window]
    ys = [v for _, v in window]
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sxx
    start = y_mean + slope * (xs[0] - x_mean)
    end = y_mean + slope * (xs[-1] - x_mean)
    residual = sum((y - (y_mean + slope * (x - x_mean))) ** 2 for x, y in zip(xs, ys, strict=True))
    if len(window) > 2 and residual > 0:
        t = slope / math.sqrt(residual / (len(window) - 2) / sxx)
    else:  # points exactly on a line: the sign of the slope is all there is
        t = -math.inf if slope < 0 else (math.inf if slope > 0 else 0.0)
    scale = max(abs(start), floor)
    drop = (start - end) / scale if scale else 0.0
    first_epoch, first_value = points[0]
    average = (end - first_value) / (xs[-1] - first_epoch) if xs[-1] > first_epoch else 0.0
    pace = slope / average if average < 0 else 0.0  # both negative when falling
    return _Trend(int(xs[0]), int(xs[-1]), start, end, drop, t, len(window), pace)


def _trend_text(trend: _Trend) -> str:
    return (f"from {_fmt(trend.start)} at epoch {trend.first_epoch} to {_fmt(trend.end)} at epoch "
            f"{trend.last_epoch} ({_pct(trend.drop)} lower over the last {trend.epochs} epochs, at "
            f"{_pct(trend.pace)} of the run's average pace)")


@dataclass
class _Run:
    """The epoch records of a run as aligned lists, plus what the rules share."""

    epochs: list[int]
    steps: list[int | None]
    lrs: list[float | None]
    train: list[float | None]  # running training loss per epoch (train mode)
    val: list[float | None]
    train_acc: list[float | None]
    val_acc: list[float | None]
    summary: dict[str, Any]
    task: str
    ref: float | None
    ref_name: str  # how the message names the reference
    at_chance_known: bool  # ref is the chance loss
    initial: float | None  # the first batch's loss
    early_stopping: bool
    update_ratios: dict[str, float]
    trend: _Trend | None  # of val (train when there is no validation)
    trend_of: str  # "validation" or "training"

    @property
    def n(self) -> int:
        return len(self.epochs)

    def finite(self, series: list[float | None]) -> list[tuple[int, float]]:
        """(index, value) of the finite entries of ``series``."""
        return [(i, v) for i, v in enumerate(series) if v is not None]

    def end_level(self, series: list[float | None], after: int = -1) -> float | None:
        """Median of the last END_FRACTION of the finite values after index ``after``; None when
        fewer than END_MIN_EPOCHS are left (a level needs a few epochs, not one spike)."""
        values = [v for i, v in self.finite(series) if i > after]
        if len(values) < END_MIN_EPOCHS:
            return None
        k = max(END_MIN_EPOCHS, math.ceil(END_FRACTION * self.n))
        return _median(values[-k:])

    def kept(self, name: str) -> float | None:
        """``train_loss`` / ``val_loss`` / ``*_acc`` of the kept weights: summary.json (eval mode)
        when given, else the last epoch's record."""
        value = _number(self.summary.get(name))
        if value is not None:
            return value
        series = {"train_loss": self.train, "val_loss": self.val,
                  "train_acc": self.train_acc, "val_acc": self.val_acc}[name]
        return series[-1] if series else None

    def step_at(self, index: int) -> int | None:
        return self.steps[index] if 0 <= index < self.n else None

    @property
    def stop_reason(self) -> str:
        return str(self.summary.get("stop_reason") or "")

    @property
    def diverged(self) -> bool:
        return bool(self.summary.get("diverged")) or self.stop_reason.startswith(_DIVERGED_REASONS)

    @property
    def typical_ratio(self) -> tuple[float, list[str]] | None:
        """Median over layers of the median update/weight ratio, and the layers' names."""
        values = {k: v for k, v in self.update_ratios.items() if _number(v) is not None and v >= 0}
        if not values:
            return None
        return _median(list(values.values())), sorted(values)

    def lr_text(self) -> str:
        lrs = [lr for lr in self.lrs if lr is not None]
        if not lrs:
            return ""
        low, high = min(lrs), max(lrs)
        return f" (lr {_fmt(high)})" if high <= low * CONSTANT_LR_RATIO else f" (lr {_fmt(low)} to {_fmt(high)})"


def _epoch_records(history: list[dict]) -> list[dict]:
    """The per-epoch records of metrics.jsonl, in epoch order (per-batch lines have no train_loss)."""
    by_epoch: dict[int, dict] = {}
    for record in history:  # a resumed run may repeat an epoch: the later line wins
        if isinstance(record, dict) and "train_loss" in record and _number(record.get("epoch")) is not None:
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _reference(chance_loss: float | None, initial_loss: float | None, train: list[float | None],
               task: str) -> tuple[float | None, str, bool]:
    chance = _number(chance_loss)
    if chance is not None and chance > 0:
        guess = "always guessing the class frequencies" if task == "classification" else "always predicting the mean"
        return chance, f"the chance loss {_fmt(chance)} ({guess})", True
    initial = _number(initial_loss)
    if initial is not None and initial > 0:
        return initial, f"the initial loss {_fmt(initial)}", False
    first = next((v for v in train if v is not None and v > 0), None)
    if first is not None:
        return first, f"the first epoch's loss {_fmt(first)}", False
    return None, "", False


# --------------------------------------------------------------------------- lr_too_high


_LOWER_LR = ("Lower the learning rate 3-10x (`babysit lr-find` suggests one), or add a warmup "
             "(schedule.warmup_steps) or gradient clipping (optimizer.grad_clip).")


def _lr_too_high(run: _Run) -> Finding | None:
    ratio = run.typical_ratio
    ratio_evidence = {} if ratio is None else {"update_ratio_typical": ratio[0], "update_ratio": run.update_ratios}
    lr = run.lr_text()

    # 1. the run diverged: the explosion guard stopped it, or the loss became NaN / inf
    nonfinite = [run.epochs[i] for i, r in enumerate(run.train) if r is None]
    if run.diverged or nonfinite:
        reason = run.stop_reason.split(":")[0]
        why = (f"the run was stopped because the loss diverged{f' ({reason})' if reason else ''}"
               if run.diverged else f"the training loss was NaN or infinite from epoch {nonfinite[0]}")
        return Finding(
            "lr_too_high", "warning",
            f"Training blew up{lr}: {why}. A learning rate too high for this network is the usual "
            "cause: each step overshoots the minimum by more than the last, and the loss grows "
            "until it overflows (CS231n: the 'very high learning rate' curve).",
            _LOWER_LR + " If a lower lr does not help, look for bad inputs (NaN, huge values) or a log(0).",
            {"stop_reason": run.stop_reason or None, "nonfinite_epochs": nonfinite[:10], **ratio_evidence},
            step=_last_step(run),
        )

    finite_train = run.finite(run.train)
    if run.ref is None or len(finite_train) < TREND_MIN_EPOCHS:
        if ratio is not None and ratio[0] > RATIO_HIGH:
            return _ratio_high(run, ratio, lr)
        return None

    # 2. the training loss went up and stayed up
    low_index, low = min(finite_train, key=lambda p: p[1])
    end = run.end_level(run.train, after=low_index)
    if (end is not None and end >= (1 + TRAIN_RISE_RELATIVE) * low
            and end - low >= TRAIN_RISE_ABSOLUTE * run.ref):
        return Finding(
            "lr_too_high", "warning",
            f"The training loss went up{lr}: it was lowest at epoch {run.epochs[low_index]} "
            f"({_fmt(low)}) and rose to {_fmt(end)} by the end of the run ({run.epochs[-1]} epochs). "
            "On a fixed training set a loss that climbs and stays up almost always means the steps "
            "overshoot: the learning rate is too high (CS231n: the 'very high learning rate' curve).",
            _LOWER_LR,
            {"train_loss_min": low, "train_loss_min_epoch": run.epochs[low_index], "train_loss_end": end,
             "rise": end / low - 1, "reference": run.ref, **ratio_evidence},
            step=run.step_at(low_index),
        )

    # 3. the training loss bounces from epoch to epoch at a constant lr
    half = run.train[run.n // 2:]
    values = [v for v in half if v is not None]
    lrs = [lr_ for lr_ in run.lrs[run.n // 2:] if lr_ is not None]
    constant_lr = not lrs or max(lrs) <= CONSTANT_LR_RATIO * min(lrs)
    if len(values) >= 6 and constant_lr:
        changes = [b - a for a, b in zip(values, values[1:], strict=False)]
        typical = _median([abs(c) for c in changes])
        ups = sum(c > 0 for c in changes) / len(changes)
        if typical >= BOUNCE_ABSOLUTE * run.ref and ups >= BOUNCE_UP_FRACTION:
            return Finding(
                "lr_too_high", "warning",
                f"The training loss bounces from epoch to epoch{lr}: over the last {len(values)} epochs "
                f"it changed by {_fmt(typical)} a typical epoch ({_pct(typical / run.ref)} of "
                f"{run.ref_name}), up as often as down ({_pct(ups)} of the changes were rises), "
                f"between {_fmt(min(values))} and {_fmt(max(values))}. Steps that large jump across the "
                "valley instead of descending into it (CS231n: a too-high learning rate).",
                _LOWER_LR,
                {"typical_change": typical, "rising_fraction": ups, "epochs": len(values),
                 "reference": run.ref, **ratio_evidence},
                step=run.step_at(run.n - 1),
            )

    # 4. it settled at the chance loss: learned nothing
    kept_train = _number(run.summary.get("train_loss"))
    best = low if kept_train is None else min(low, kept_train)
    if (run.at_chance_known and AT_CHANCE * run.ref <= best <= AT_CHANCE_HIGH * run.ref
            and not (run.trend and run.trend.falling)):
        why = ""
        first = run.train[0]
        if run.initial is not None and first is not None and first > run.initial:
            times = f", {first / run.initial:.2g}x" if first >= 1.5 * run.initial else ", above"
            why += (f" Its first epoch averaged {_fmt(first)}{times} the initial loss {_fmt(run.initial)}: "
                    "the first steps made things worse.")
        if ratio is not None and ratio[0] == 0:
            why += " Every layer's update/weight ratio was 0: no gradient reaches the weights, the units are dead."
        return Finding(
            "lr_too_high", "warning",
            f"The network learned nothing{lr}: its best training loss, {_fmt(best)}, is "
            f"{_pct(best / run.ref)} of {run.ref_name}, and it stayed there for {run.n} epochs.{why} "
            "The usual cause is a learning rate so high that the first steps threw the weights "
            "far off or killed the ReLUs, after which nothing moves (CS231n: 'as much as 40% of "
            "your network can be dead' with a too-high learning rate).",
            _LOWER_LR + " If a 10x lower lr still learns nothing, check that the labels belong to "
            "the inputs and that the model's output reaches the loss.",
            {"best_train_loss": best, "chance_loss": run.ref, "fraction_of_chance": best / run.ref,
             "thresholds": [AT_CHANCE, AT_CHANCE_HIGH], **ratio_evidence},
        )

    # 5. the monitors: the typical layer takes steps far larger than CS231n's 1e-3
    if ratio is not None and ratio[0] > RATIO_HIGH:
        return _ratio_high(run, ratio, lr)
    return None


def _last_step(run: _Run) -> int | None:
    steps = _number(run.summary.get("steps"))
    return int(steps) if steps is not None else run.step_at(run.n - 1)


def _ratio_high(run: _Run, ratio: tuple[float, list[str]], lr: str) -> Finding:
    return Finding(
        "lr_too_high", "warning",
        f"Each step changes the weights of a typical layer by {_fmt(ratio[0])} of their size (median "
        f"||Δw||/||w|| over {len(ratio[1])} layers){lr}; CS231n puts a healthy ratio near 1e-3, "
        f"and above {RATIO_HIGH:g} the steps are too big to settle.",
        _LOWER_LR,
        {"update_ratio_typical": ratio[0], "update_ratio": run.update_ratios, "threshold": RATIO_HIGH},
    )


# --------------------------------------------------------------------------- lr_too_low


def _lr_too_low(run: _Run) -> Finding | None:
    ratio = run.typical_ratio
    lr = run.lr_text()
    end = run.kept("train_loss")
    if end is None or run.ref is None:
        return None
    trend = run.trend
    falling = trend is not None and trend.falling
    barely = falling and run.n >= LOW_MIN_EPOCHS and end >= LOW_PROGRESS * run.ref
    small_steps = falling and ratio is not None and 0 < ratio[0] < RATIO_LOW_FALLING
    tiny_steps = ratio is not None and 0 < ratio[0] < RATIO_LOW and end >= FITTED * run.ref
    if not (barely or small_steps or tiny_steps):
        return None
    parts = []
    if falling:
        parts.append(f"the {run.trend_of} loss was still falling at the end, slowly and steadily: "
                     f"{_trend_text(trend)}")
    if barely:
        parts.append(f"after {run.n} epochs the training loss, {_fmt(end)}, is still "
                     f"{_pct(end / run.ref)} of {run.ref_name}")
    if small_steps or tiny_steps:
        parts.append(f"each step changed the weights of a typical layer by only {_fmt(ratio[0])} of "
                     f"their size (median ||Δw||/||w||; CS231n: about 1e-3 is healthy)")
    text = "; ".join(parts)
    return Finding(
        "lr_too_low", "warning",
        f"The learning rate looks too low{lr}: {text}. Small steps make the loss creep down in a "
        "nearly straight line (CS231n: the 'low learning rate' curve); the run ends long before "
        "the network has learned what it can.",
        "Raise the learning rate 3-10x (`babysit lr-find` suggests one); with a higher lr the same "
        "epochs go much further.",
        {"train_loss_end": end, "reference": run.ref, "epochs": run.n,
         **({"trend_drop": trend.drop, "trend_pace": trend.pace, "trend_t": trend.t,
             "trend_from_epoch": trend.first_epoch}
            if trend is not None else {}),
         **({"update_ratio_typical": ratio[0], "update_ratio": run.update_ratios} if ratio else {}),
         "thresholds": {"low_progress": LOW_PROGRESS, "ratio_low_while_falling": RATIO_LOW_FALLING,
                        "ratio_low": RATIO_LOW}},
        step=run.step_at(run.n - 1),
    )


# --------------------------------------------------------------------------- not_converged


def _not_converged(run: _Run, epochs_planned: int | None) -> Finding | None:
    if run.summary.get("stopped_early") or run.diverged or not run.n:
        return None
    last = run.epochs[-1]
    if epochs_planned is not None and last < epochs_planned:
        return None  # ended before its limit for a reason of its own
    trend = run.trend
    if trend is None or not trend.falling:
        return None
    plateau = trend.pace < PLATEAU_PACE
    return Finding(
        "not_converged", "info" if plateau else "warning",
        (f"The run ended at its epoch limit ({last}) with the {run.trend_of} loss on a plateau, still drifting "
         f"down: {_trend_text(trend)}. More training would gain a little, slowly." if plateau else
         f"The run ended at its epoch limit ({last}) while the {run.trend_of} loss was still "
         f"clearly falling: {_trend_text(trend)}. More training would still have helped."),
        "Train longer (raise train.epochs, e.g. 2x; early stopping ends the run when validation "
        "stops improving). If the loss falls this slowly from the start, raise the learning rate instead.",
        {"epochs": last, "epochs_planned": epochs_planned, "series": run.trend_of,
         "fitted_start": trend.start, "fitted_end": trend.end, "drop": trend.drop, "pace": trend.pace,
         "t": trend.t, "window_from_epoch": trend.first_epoch,
         "thresholds": {"drop": FALL_MIN, "pace": FALL_RATE, "t": -FALL_T, "plateau_pace": PLATEAU_PACE}},
        step=run.step_at(run.n - 1),
    )


# --------------------------------------------------------------------------- overfitting


_REGULARISE = ("get more training data or augment it, add weight decay (optimizer.weight_decay) "
               "or dropout (model.dropout), or use a smaller network")


def _accuracy_text(run: _Run) -> str:
    train_acc, val_acc = run.kept("train_acc"), run.kept("val_acc")
    if run.task != "classification" or train_acc is None or val_acc is None:
        return ""
    return f" (accuracy {_pct(train_acc)} on training, {_pct(val_acc)} on validation)"


def _overfitting(run: _Run) -> Finding | None:
    finite_val = run.finite(run.val)
    if run.ref is None or len(finite_val) < TREND_MIN_EPOCHS:
        return None
    best_index, best = min(finite_val, key=lambda p: p[1])
    after = run.end_level(run.val, after=best_index)
    train_then = run.train[best_index]
    train_end = run.end_level(run.train, after=best_index)
    rose = (after is not None and after >= (1 + VAL_RISE_RELATIVE) * best
            and after - best >= VAL_RISE_ABSOLUTE * run.ref)
    train_fell = train_then is not None and train_end is not None and train_end <= TRAIN_KEPT_FALLING * train_then
    kept_train, kept_val = run.kept("train_loss"), run.kept("val_loss")
    gap = kept_val - kept_train if kept_train is not None and kept_val is not None else None
    accuracy = _accuracy_text(run)
    evidence = {"val_loss_min": best, "val_loss_min_epoch": run.epochs[best_index], "val_loss_end": after,
                "train_loss_at_val_min": train_then, "train_loss_end": train_end,
                "kept_train_loss": kept_train, "kept_val_loss": kept_val, "gap": gap,
                "kept_train_acc": run.kept("train_acc"), "kept_val_acc": run.kept("val_acc"),
                "reference": run.ref, "early_stopping": run.early_stopping}
    if rose and train_fell:
        evidence["rise"] = after / best - 1
        story = (f"validation loss rose from {_fmt(best)} at epoch {run.epochs[best_index]} to "
                 f"{_fmt(after)} by epoch {run.epochs[-1]} while training loss kept falling, from "
                 f"{_fmt(train_then)} to {_fmt(train_end)}")
        if run.early_stopping:
            kept_epoch = int(run.summary.get("best_epoch") or run.epochs[best_index])
            kept = ("so the saved model is the one from before it overfit" if kept_epoch <= run.epochs[best_index]
                    else "the best by its monitor, so the saved model is not the overfit last one")
            return Finding(
                "overfitting", "info",
                f"The network overfits after epoch {run.epochs[best_index]}: {story}. Early stopping kept "
                f"epoch {kept_epoch}, {kept}{accuracy}.",
                f"Nothing to fix in this run. To do better than its best epoch, {_REGULARISE}.",
                {**evidence, "kept_epoch": kept_epoch},
                step=run.step_at(best_index),
            )
        return Finding(
            "overfitting", "warning",
            f"The network overfits: {story}. It learns the training examples by heart instead of "
            f"what generalises, and without early stopping the kept weights are the last, overfit "
            f"ones{accuracy}.",
            f"Turn on early stopping (train.early_stopping.patience) to keep the best epoch's weights; "
            f"to generalise better, {_REGULARISE}.",
            evidence,
            step=run.step_at(best_index),
        )
    if gap is not None and gap >= GAP_LARGE * run.ref:
        return Finding(
            "overfitting", "info",
            f"The model does much better on its training data than on new data: training loss "
            f"{_fmt(kept_train)} against validation loss {_fmt(kept_val)}{accuracy}, a gap of "
            f"{_pct(gap / run.ref)} of {run.ref_name} (CS231n: the train/validation gap measures "
            "overfitting). Validation loss is not clearly rising, so the kept model is about as good "
            "as this setup gets.",
            f"To close the gap, {_REGULARISE}.",
            {**evidence, "threshold_gap": GAP_LARGE},
        )
    return None


# --------------------------------------------------------------------------- underfitting


def _underfitting(run: _Run) -> Finding | None:
    kept_train, kept_val = run.kept("train_loss"), run.kept("val_loss")
    if run.ref is None or kept_train is None or (run.trend is not None and run.trend.falling):
        return None
    if not POOR * run.ref <= kept_train < AT_CHANCE * run.ref:
        return None  # fits well; or learned nothing at all, which no capacity explains
    if kept_val is not None and kept_val - kept_train >= CLOSE * run.ref:
        return None
    against = f" and validation loss {_fmt(kept_val)}" if kept_val is not None else ""
    return Finding(
        "underfitting", "info",
        f"The model fits even its training data poorly: training loss {_fmt(kept_train)}{against}"
        f"{_accuracy_text(run)}, still {_pct(kept_train / run.ref)} of {run.ref_name}, and "
        "training and validation are close. The run converged, so more epochs will not help: the "
        "model is likely too simple for the task (it is not overfitting).",
        "Give the model more capacity (more or wider layers, model.hidden / model.channels), train "
        "longer or regularise less (weight decay, dropout). If it is already large, a learning "
        "rate too high also plateaus early at a high loss: try one 3-10x lower.",
        {"kept_train_loss": kept_train, "kept_val_loss": kept_val, "reference": run.ref,
         "fraction_of_reference": kept_train / run.ref, "threshold_poor": POOR, "threshold_close": CLOSE},
    )


# --------------------------------------------------------------------------- entry points


def diagnose(
    history: list[dict],
    summary: dict | None = None,
    *,
    task: str = "classification",
    initial_loss: float | None = None,
    chance_loss: float | None = None,
    epochs_planned: int | None = None,
    early_stopping: bool = True,
    update_ratios: dict[str, float] | None = None,
) -> list[Finding]:
    """The after-run findings of a run's learning curves: ``lr_too_high``, ``lr_too_low``,
    ``not_converged``, ``overfitting``, ``underfitting``.

    Parameters
    ----------
    history : the records of metrics.jsonl in order; per-epoch ones (with ``epoch`` and
        ``train_loss``) are used, per-batch lines ignored. NaN losses may be None.
    summary : summary.json: eval-mode ``train_loss`` / ``val_loss`` / ``*_acc`` of the kept
        weights, ``best_epoch``, ``stopped_early``, ``stop_reason``, ``diverged``.
    task : ``classification`` or ``regression`` (accuracies are quoted for classification).
    initial_loss : the first batch's loss; the reference when ``chance_loss`` is unknown.
    chance_loss : the loss of a constant guess (ln C for softmax over C balanced classes,
        the targets' variance for MSE); the scale every threshold is measured on.
    epochs_planned : ``train.epochs`` of the spec (a run that reached it may be unfinished).
    early_stopping : whether the kept weights are the best epoch's (early stopping on).
    update_ratios : layer name -> median ``||Δw|| / ||w||`` over the run, from the monitors.

    Returns
    -------
    list of :class:`~babysit.checks.findings.Finding`, at most one per id, most severe
    first. A healthy run gets none, or only info.

    Example
    -------
    >>> history = [{"epoch": e, "step": 10 * e, "lr": 0.1,
    ...             "train_loss": 2.0 * 0.8 ** e, "val_loss": 0.6 + 0.002 * (e - 15) ** 2}
    ...            for e in range(1, 41)]
    >>> [f.id + " " + f.severity for f in diagnose(history, chance_loss=2.3, early_stopping=False)]
    ['overfitting warning']
    >>> f = diagnose(history, {"best_epoch": 15}, chance_loss=2.3)[0]
    >>> f.severity, "Early stopping kept epoch 15" in f.message, f.step
    ('info', True, 150)
    """
    records = _epoch_records(history)
    summary = dict(summary or {})
    train = [_number(r.get("train_loss")) for r in records]
    val = [_number(r.get("val_loss")) for r in records]
    has_val = any(v is not None for v in val)
    epochs = [int(r["epoch"]) for r in records]
    ref, ref_name, at_chance_known = _reference(chance_loss, initial_loss, train, task)
    trend_series = val if has_val else train
    run = _Run(
        epochs=epochs,
        steps=[int(r["step"]) if _number(r.get("step")) is not None else None for r in records],
        lrs=[_number(r.get("lr")) for r in records],
        train=train,
        val=val if has_val else [None] * len(records),
        train_acc=[_number(r.get("train_acc")) for r in records],
        val_acc=[_number(r.get("val_acc")) for r in records],
        summary=summary,
        task=task,
        ref=ref,
        ref_name=ref_name,
        at_chance_known=at_chance_known,
        initial=_number(initial_loss),
        early_stopping=early_stopping,
        update_ratios={str(k): float(v) for k, v in (update_ratios or {}).items() if _number(v) is not None},
        trend=_trend(epochs, trend_series, FALL_FLOOR * ref if ref else 0.0),
        trend_of="validation" if has_val else "training",
    )
    if not records:
        return []
    found: list[Finding] = []
    high = _lr_too_high(run)
    low = None if high is not None else _lr_too_low(run)
    for finding in (high, low, _not_converged(run, epochs_planned), _overfitting(run)):
        if finding is not None:
            found.append(finding)
    if high is None and low is None:  # with a wrong lr the curves say nothing about capacity
        under = _underfitting(run)
        if under is not None:
            found.append(under)
    rank = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda f: rank[f.severity])


def _chance_and_task(spec: Any) -> tuple[float | None, str]:
    """The chance loss and task of a run's data (loads the data; None when it cannot)."""
    try:
        splits = data_module.load(spec.data)
    except (BabysitError, OSError, ValueError):
        return None, "classification"
    return losses.chance_loss(spec.loss, splits.task, splits.num_classes, splits.train.y,
                              balanced=spec.loss_weights == "balanced"), splits.task


def diagnose_run(path: str | Path, *, chance_loss: float | None = None, task: str | None = None) -> list[Finding]:
    """:func:`diagnose` on a run directory: metrics.jsonl, summary.json, config.yaml and
    monitors.jsonl (the first sample's loss, and each layer's median update/weight ratio).

    The chance loss and task come from the run's training labels (the data is loaded again)
    unless given; the runner, which has the data at hand, passes them.

    Example
    -------
    >>> import tempfile
    >>> from babysit.config import Experiment
    >>> from babysit.run import run
    >>> spec = Experiment(data={"source": "spirals", "samples": 300}, model={"hidden": []},
    ...                   train={"epochs": 30, "device": "cpu"}, checks={"preflight": False})
    >>> folder = tempfile.mkdtemp() + "/run"
    >>> _ = run(spec, out=folder, quiet=True)
    >>> [f.id + " " + f.severity for f in diagnose_run(folder)]  # a line cannot split a spiral
    ['underfitting info']
    """
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise BabysitError(f"{path}: not a run directory (no metrics.jsonl)")
    history = read_jsonl(metrics)
    summary = read_json(path / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    epochs_planned, early_stopping = None, True
    if (path / "config.yaml").is_file():
        spec = config_module.load(path / "config.yaml")
        epochs_planned = spec.train.epochs
        early_stopping = spec.train.early_stopping.patience is not None
        if chance_loss is None or task is None:
            chance_loss, task = _chance_and_task(spec)
    records = read_jsonl(path / "monitors.jsonl") if (path / "monitors.jsonl").is_file() else []
    initial = _number(records[0].get("loss")) if records else None
    ratios = monitor_summary(records)["update_ratio_median"] if records else None
    return diagnose(
        history, summary, task=task or "classification", initial_loss=initial, chance_loss=chance_loss,
        epochs_planned=epochs_planned, early_stopping=early_stopping, update_ratios=ratios,
    )


__all__ = ["diagnose", "diagnose_run"]
