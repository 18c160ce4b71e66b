"""The report's figures: small matplotlib (Agg) figures drawn from what a run directory holds.

Each function takes plain records (the dicts of ``metrics.jsonl`` / ``monitors.jsonl``, a
weight array) and returns a :class:`matplotlib.figure.Figure`, or None when there is
nothing to draw. :func:`png_bytes` turns one into PNG bytes at a low dpi, so a report of a
long run stays well under a megabyte. Figures are built with ``Figure()`` directly, never
through pyplot: no global state, no GUI backend, safe to call from any thread.

The pictures follow CS231n ("Neural Networks Part 3", "Babysitting the learning process"):
the loss curve, the train/validation accuracy gap, the update/weight ratio ``||Δw||/||w||``
on a log axis against the healthy ~1e-3, the activation histograms per layer at init and
at the end, and the first layer's weights drawn as images.

Example
-------
>>> history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in range(1, 6)]
>>> png_bytes(loss_curves(history))[:8] == PNG_SIGNATURE
True
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 80
# CS231n: the update/weight ratio "should be somewhere around 1e-3"; the band marks a decade
# either side (the monitors warn only outside 1e-5 .. 1e-1, babysit.checks.monitors).
HEALTHY_UPDATE_RATIO = 1e-3
HEALTHY_BAND = (1e-4, 1e-2)
MAX_LAYERS = 8  # per-layer grids show the first ones; a figure per layer past that adds little
MAX_FILTERS = 64

_COLOURS = {"train": "tab:blue", "val": "tab:orange"}


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (Agg, ``dpi`` dots per inch).

    Example
    -------
    >>> png_bytes(Figure(figsize=(1, 1)))[:4]
    b'\\x89PNG'
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})  # no URL in the file
    return buffer.getvalue()


def _finite(values: Sequence[Any]) -> list[float]:
    """Numbers as floats, None / NaN / inf as NaN (matplotlib leaves a gap there)."""
    out = []
    for v in values:
        out.append(float(v) if isinstance(v, int | float) and math.isfinite(v) else math.nan)
    return out


def _series(records: Sequence[dict[str, Any]], key: str, x_key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in records if key in r and x_key in r]
    return [r[x_key] for r in rows], _finite([r[key] for r in rows])


def _new(width: float, height: float, cols: int = 1, rows: int = 1, top: float = 0.2) -> tuple[Figure, Any]:
    """A figure with fixed margins (in inches): a layout engine would double the drawing time."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - top / height,
                        wspace=0.3 + 0.1 * (cols > 2), hspace=0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _positive(values: list[float]) -> list[float]:
    """For a log axis: zero and negative values as gaps."""
    return [v if v > 0 else math.nan for v in values]


def loss_curves(history: Sequence[dict[str, Any]], mark_epoch: int | None = None,
                mark_label: str = "") -> Figure | None:
    """Training and validation loss per epoch, and accuracy when the run measured it.

    ``mark_epoch`` draws a vertical line there (a finding's epoch, the kept weights).

    Example
    -------
    >>> history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_acc": 0.5},
    ...            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_acc": 0.7}]
    >>> len(loss_curves(history, mark_epoch=2, mark_label="best").axes)
    2
    >>> loss_curves([]) is None
    True
    """
    epochs = [r for r in history if "epoch" in r]
    if not epochs:
        return None
    has_acc = any(k in r for r in epochs for k in ("train_acc", "val_acc"))
    fig, axes = _new(7.5 if has_acc else 4.5, 2.6, cols=2 if has_acc else 1)
    panels = [("loss", axes[0][0])] + ([("acc", axes[0][1])] if has_acc else [])
    for metric, ax in panels:
        for split in ("train", "val"):
            x, y = _series(epochs, f"{split}_{metric}", "epoch")
            if x:
                ax.plot(x, y, color=_COLOURS[split], lw=1.4, label=f"{split}", marker="." if len(x) < 20 else None)
        if metric == "loss":
            values = [v for split in ("train", "val") for v in _series(epochs, f"{split}_loss", "epoch")[1]]
            if values and min((v for v in values if v == v), default=1) > 0 and _spread(values) > 30:
                ax.set_yscale("log")
        if mark_epoch is not None:
            ax.axvline(mark_epoch, color="tab:red", ls="--", lw=1, label=mark_label or f"epoch {mark_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if metric == "loss" else "lower right")
    return fig


def _spread(values: list[float]) -> float:
    finite = [v for v in values if v == v and v > 0]
    return max(finite) / min(finite) if finite else 1.0


def lr_curve(history: Sequence[dict[str, Any]]) -> Figure | None:
    """The learning rate per epoch (metrics.jsonl's ``lr``: the rate at the end of each epoch),
    a flat line when it never changed; None when no epoch recorded one.

    Example
    -------
    >>> lr_curve([{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.1}]) is not None
    True
    >>> lr_curve([{"epoch": 1, "train_loss": 1.0}]) is None
    True
    """
    x, y = _series([r for r in history if "epoch" in r], "lr", "epoch")
    finite = [v for v in y if v == v]
    if not finite:
        return None
    fig, axes = _new(4.5, 2.2)
    ax = axes[0][0]
    ax.plot(x, y, color="tab:green", lw=1.4, marker="." if len(x) < 20 else None)
    if min(finite) > 0 and max(finite) / min(finite) > 30:
        ax.set_yscale("log")
    elif max(finite) == min(finite):
        ax.set_ylim(0, 2 * max(finite) if max(finite) > 0 else 1)  # a constant: its level, not a zoom on nothing
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return fig


def input_wait_curve(history: Sequence[dict[str, Any]], bar: float | None = None) -> Figure | None:
    """Per epoch, the fraction of the sampled steps' time spent waiting for the next batch
    (metrics.jsonl's ``input_wait``), with the ``input_bound`` bar; None when no epoch timed it.

    Example
    -------
    >>> input_wait_curve([{"epoch": 1, "input_wait": 0.6}, {"epoch": 2, "input_wait": 0.5}], bar=0.3) is not None
    True
    >>> input_wait_curve([{"epoch": 1, "train_loss": 1.0}]) is None
    True
    """
    x, y = _series([r for r in history if "epoch" in r], "input_wait", "epoch")
    if not x:
        return None
    fig, axes = _new(4.5, 2.2)
    ax = axes[0][0]
    ax.plot(x, y, color="tab:purple", lw=1.4, marker="." if len(x) < 20 else None, label="waiting for data")
    if bar is not None:
        ax.axhline(bar, color="tab:red", ls="--", lw=1, label=f"bar {bar:.0%}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of step time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def layer_names(records: Sequence[dict[str, Any]], key: str) -> list[str]:
    """The layers that report ``key`` in the monitor records, in the order they first appear.

    Example
    -------
    >>> layer_names([{"step": 1, "layers": {"fc.0": {"update_ratio": 1e-3}, "fc.1": {"act_std": 1.0}}}],
    ...             "update_ratio")
    ['fc.0']
    """
    names: dict[str, None] = {}
    for record in records:
        for name, stats in record.get("layers", {}).items():
            if key in stats:
                names.setdefault(name)
    return list(names)


def zero_floor(values: Sequence[float]) -> float:
    """Where a log axis draws exact zeros: a decade below the decade of the smallest positive
    value (of 1 when none is positive), so the zero band never overlaps a real value.

    Example
    -------
    >>> zero_floor([0.0, 3e-4, 2.0]), zero_floor([0.0])
    (1e-05, 0.1)
    """
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return 10.0 ** (math.floor(math.log10(min(positive, default=1.0))) - 1)


def layer_series(records: Sequence[dict[str, Any]], key: str, *, ylabel: str, layers: Sequence[str] | None = None,
                 log: bool = False, band: tuple[float, float] | None = None, line: float | None = None,
                 mark_step: int | None = None, ylim: tuple[float, float] | None = None,
                 highlight: str | None = None) -> Figure | None:
    """One monitor statistic over training steps, a line per layer.

    ``band`` shades a healthy range and ``line`` draws a reference level (the update/weight
    ratio's 1e-3); ``mark_step`` marks a finding's step; ``highlight`` draws that layer thicker.

    A log axis cannot show 0, yet a gradient norm of exactly 0 is the plainest sign of a dead
    net: zeros are drawn on a grey band at the bottom of the axis (:func:`zero_floor`), its
    tick labelled "0", each zero marked with a triangle, rather than left out as gaps.

    Example
    -------
    >>> records = [{"step": s, "layers": {"fc": {"update_ratio": 1e-3 * s}}} for s in (1, 11, 21)]
    >>> fig = layer_series(records, "update_ratio", ylabel="||Δw||/||w||", log=True, band=HEALTHY_BAND)
    >>> fig.axes[0].get_yscale()
    'log'
    >>> layer_series(records, "dead_fraction", ylabel="dead") is None
    True
    >>> dead = [{"step": s, "layers": {"fc": {"grad_norm": g}}} for s, g in ((1, 0.5), (11, 0.0), (21, 0.0))]
    >>> ax = layer_series(dead, "grad_norm", ylabel="||∇w||", log=True).axes[0]
    >>> bool(ax.get_ylim()[0] < 0.01 < ax.get_ylim()[1]), ax.yaxis.get_major_formatter()(0.01, 0)
    (True, '0')
    """
    names = list(layers) if layers is not None else layer_names(records, key)
    names = [n for n in names if any(key in r.get("layers", {}).get(n, {}) for r in records)][:MAX_LAYERS]
    if not names:
        return None
    series = []
    for name in names:
        rows = [r for r in records if key in r.get("layers", {}).get(name, {})]
        series.append((name, [r["step"] for r in rows], _finite([r["layers"][name][key] for r in rows])))
    values = [v for _, _, y in series for v in y if v == v]
    floor = None
    if log and any(v == 0 for v in values):
        floor = zero_floor([*values, *(band or ()), *((line,) if line else ())])  # below the healthy band too
    fig, axes = _new(5.2, 2.6)
    ax = axes[0][0]
    if band is not None:
        ax.axhspan(*band, color="tab:green", alpha=0.12, label="healthy band")
    if line is not None:
        ax.axhline(line, color="tab:green", lw=1, ls=":")
    if floor is not None:
        ax.axhspan(floor / 3, floor * 3, color="0.5", alpha=0.18, lw=0, label="exactly 0")
    plotted = False
    for name, x, y in series:
        if log:
            y = [floor if v == 0 and floor is not None else v for v in y]
            y = _positive(y)
        if any(v == v for v in y):
            plotted = True
        drawn = ax.plot(x, y, lw=2.2 if name == highlight else 1.2, label=name, marker="." if len(x) < 20 else None)
        zeros = [step for step, v in zip(x, y, strict=True) if floor is not None and v == floor]
        if zeros:  # on the band, in the layer's colour, so a lone zero is still seen
            ax.plot(zeros, [floor] * len(zeros), "v", color=drawn[0].get_color(), ms=5, zorder=3)
    if log and plotted:
        ax.set_yscale("log")
    if floor is not None:
        ax.set_ylim(bottom=floor / 3)
        if not any(v > 0 for v in values):  # every value 0: the band, and room for the reference levels
            ax.set_ylim(top=max([floor * 100, *((2 * band[1],) if band else ()), *((2 * line,) if line else ())]))
        base = ax.yaxis.get_major_formatter()
        ax.yaxis.set_major_formatter(FuncFormatter(
            lambda v, pos: "0" if math.isclose(v, floor, rel_tol=1e-6) else base(v, pos)))
        ax.yaxis.set_minor_formatter(NullFormatter())  # no 2e-5, 3e-5 ... labels inside the band
    if mark_step is not None:
        ax.axvline(mark_step, color="tab:red", ls="--", lw=1, label=f"step {mark_step}")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def count_zeros(records: Sequence[dict[str, Any]], key: str) -> int:
    """How many (layer, step) samples of ``key`` are exactly 0.

    Example
    -------
    >>> count_zeros([{"step": 1, "layers": {"a": {"grad_norm": 0.0}, "b": {"grad_norm": 0.1}}}], "grad_norm")
    1
    """
    return sum(1 for r in records for stats in r.get("layers", {}).values()
               if isinstance(stats, dict) and stats.get(key) == 0 and not isinstance(stats.get(key), bool))


def monitor_loss(records: Sequence[dict[str, Any]], limit: float | None = None, mark_step: int | None = None,
                 point: tuple[int, float] | None = None) -> Figure | None:
    """The sampled training loss per step, with the explosion limit (``limit``) drawn and
    ``point`` (step, loss: the loss the guard stopped on, often between two samples) marked.

    Example
    -------
    >>> monitor_loss([{"step": 1, "loss": 2.3}, {"step": 11, "loss": 4.0}], limit=6.9, point=(15, 40.0)) is not None
    True
    """
    x, y = _series(records, "loss", "step")
    if not x:
        return None
    fig, axes = _new(4.5, 2.4)
    ax = axes[0][0]
    y = _positive(y)
    ax.plot(x, y, color="tab:blue", lw=1.2, marker="." if len(x) < 20 else None, label="training loss (sampled)")
    if point is not None and isinstance(point[1], int | float) and math.isfinite(point[1]) and point[1] > 0:
        ax.plot([point[0]], [point[1]], "x", color="tab:red", ms=8, mew=2, label=f"{point[1]:.3g} at step {point[0]}")
        y = [*y, point[1]]
    if any(v == v for v in y):
        ax.set_yscale("log")
    if limit is not None and limit > 0:
        ax.axhline(limit, color="tab:red", lw=1, ls=":", label="explosion limit")
    if mark_step is not None:
        ax.axvline(mark_step, color="tab:red", ls="--", lw=1, label=f"step {mark_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def activation_histograms(records: Sequence[dict[str, Any]]) -> Figure | None:
    """Per activation layer, the histogram of its outputs at init (the first sample) and at the
    end (the last sample with one): CS231n's picture of what init does to a deep net.

    Example
    -------
    >>> hist = {"lo": 0.0, "hi": 1.0, "counts": [5, 3, 1]}
    >>> records = [{"step": 1, "layers": {"relu": {"hist": hist}}}, {"step": 91, "layers": {"relu": {"hist": hist}}}]
    >>> len(activation_histograms(records).axes)
    2
    """
    names = layer_names(records, "hist")[:MAX_LAYERS]
    if not names:
        return None
    with_hist = {name: [r for r in records if isinstance(r.get("layers", {}).get(name, {}).get("hist"), dict)]
                 for name in names}
    rows = 2 if any(len(found) > 1 for found in with_hist.values()) else 1  # one sample: init only
    fig, axes = _new(0.6 + 1.9 * len(names), 0.3 + 1.55 * rows, cols=len(names), rows=rows, top=0.45)
    fig.subplots_adjust(left=0.3 / fig.get_figwidth(), hspace=0.6)
    for col, name in enumerate(names):
        found = with_hist[name]
        for row, (label, record) in enumerate((("init", found[0]), ("end", found[-1]))[:rows]):
            ax = axes[row][col]
            hist = record["layers"][name]["hist"]
            counts = np.asarray([c or 0 for c in hist.get("counts", [])], dtype=float)
            lo, hi = hist.get("lo"), hist.get("hi")
            if counts.size and isinstance(lo, int | float) and isinstance(hi, int | float) and hi > lo:
                edges = np.linspace(lo, hi, counts.size + 1)
                ax.stairs(counts / max(counts.sum(), 1), edges, fill=True, color="tab:blue" if row == 0 else "tab:purple")
            else:
                ax.text(0.5, 0.5, "no spread", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_title(f"{name}\n{label} (step {record['step']})" if row == 0 else f"{label} (step {record['step']})",
                         fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_yticks([])
    return fig


def first_layer_weights(weight: np.ndarray) -> Figure | None:
    """The first layer's weights as pictures: 2-D conv filters as images, a dense layer whose
    input is a square image as one image per unit, anything else (1-D conv filters, dense
    layers on vectors) as a heatmap of units x inputs.

    Example
    -------
    >>> first_layer_weights(np.random.default_rng(0).normal(size=(16, 1, 3, 3))) is not None
    True
    >>> first_layer_weights(np.zeros((10, 40))) is not None
    True
    """
    w = np.asarray(weight, dtype=float)
    if w.ndim < 2 or w.size == 0:
        return None
    w = np.nan_to_num(w[:MAX_FILTERS], nan=0.0, posinf=0.0, neginf=0.0)
    side = int(round(math.sqrt(w.shape[1]))) if w.ndim == 2 else 0
    if w.ndim == 4 or (w.ndim == 2 and side >= 4 and side * side == w.shape[1]):
        if w.ndim == 2:
            images = w.reshape(len(w), side, side)
        elif w.shape[1] == 3:
            images = w.transpose(0, 2, 3, 1)  # (out, in=RGB, kh, kw) -> (out, kh, kw, RGB)
        else:
            images = w[:, 0]  # the first input channel of each filter
        return _image_grid(images)
    rows = w.reshape(len(w), -1)  # (out, in * k): one row per unit or filter
    # constrained layout: the colour bar's tick labels (signed, as wide as "−0.0005") need a
    # margin that fixed inches do not know; one figure, so its drawing cost is small
    fig = Figure(figsize=(min(7.5, 3.2 + 0.12 * rows.shape[1]), min(4.5, 1.6 + 0.06 * len(rows))),
                 layout="constrained")
    ax = fig.subplots()
    limit = float(np.abs(rows).max()) or 1.0
    image = ax.imshow(rows, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_xlabel("input" if w.ndim == 2 else "input channel x kernel position")
    ax.set_ylabel("unit" if w.ndim == 2 else "filter")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # columns are inputs: no tick at 0.5
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    colorbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label("weight")
    colorbar.ax.tick_params(labelsize=8)
    return fig


def _image_grid(images: np.ndarray) -> Figure:
    """The images tiled into one mosaic (one axes: far cheaper to draw than an axes per image),
    each scaled to its own range (the pattern matters, not the scale), a 1-pixel white gap between."""
    count, height, width = images.shape[:3]
    cols = min(count, 16)
    rows = math.ceil(count / cols)
    channels = images.shape[3:]  # () for grey, (3,) for RGB
    mosaic = np.ones((rows * (height + 1) - 1, cols * (width + 1) - 1, *channels))
    for index, image in enumerate(images):
        lo, hi = float(image.min()), float(image.max())
        r, c = divmod(index, cols)
        mosaic[r * (height + 1):r * (height + 1) + height, c * (width + 1):c * (width + 1) + width] = (
            (image - lo) / (hi - lo) if hi > lo else 0.5)
    scale = 0.45 / max(height, width)  # inches per pixel: each image about 0.45 in across
    fig = Figure(figsize=(max(1.0, mosaic.shape[1] * scale), max(0.6, mosaic.shape[0] * scale)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(mosaic, cmap=None if channels else "gray", vmin=0, vmax=1, interpolation="nearest", aspect="equal")
    return fig


def overlaid_curves(histories: dict[str, Sequence[dict[str, Any]]]) -> Figure | None:
    """Several runs on the same axes: training loss, validation loss and validation accuracy.

    Example
    -------
    >>> a = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_acc": 0.1 * e} for e in range(1, 4)]
    >>> fig = overlaid_curves({"a": a, "b": a})
    >>> [ax.get_title() for ax in fig.axes]
    ['training loss', 'validation loss', 'validation accuracy']
    """
    panels = [(k, t) for k, t in (("train_loss", "training loss"), ("val_loss", "validation loss"),
                                  ("val_acc", "validation accuracy"))
              if any(k in r for h in histories.values() for r in h)]
    if not panels:
        return None
    fig, axes = _new(3.4 * len(panels) + 0.4, 3.0, cols=len(panels), top=0.35)
    for (key, title), ax in zip(panels, axes[0], strict=True):
        values = []
        for label, history in histories.items():
            x, y = _series([r for r in history if "epoch" in r], key, "epoch")
            values += y
            ax.plot(x, y, lw=1.3, label=label)
        if key.endswith("loss") and values and _spread(values) > 30 and min((v for v in values if v == v), default=1) > 0:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if key.endswith("acc") else "upper right")
    return fig


def _as_images(examples: np.ndarray) -> np.ndarray | None:
    """Examples (N, C, H, W) / (N, H, W) as images (N, H, W[, 3]) for :func:`_image_grid`; None
    when they are not images (vectors, 1-D signals)."""
    x = np.nan_to_num(np.asarray(examples, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W[, 3])
    if x.ndim == 3 and not (x.shape[1] < x.shape[2] and x.shape[1] <= 16):
        return x  # (N, H, W) grey images; (N, C, L), few channels, is a signal (nets.layers.conv_layout)
    return None


def _signal_rows(rows: Sequence[np.ndarray], labels: Sequence[str], overlay: np.ndarray | None = None) -> Figure:
    """One small line plot per example, in rows (``overlay``: a second line on the same axes)."""
    cols = min(8, max(len(r) for r in rows))
    fig, axes = _new(1.2 * cols + 0.8, 0.9 * len(rows) + 0.5, cols=cols, rows=len(rows), top=0.1)
    for r, (examples, label) in enumerate(zip(rows, labels, strict=True)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(examples):
                ax.plot(np.asarray(examples[c], dtype=float).reshape(-1), lw=1.0, color="tab:blue")
                if overlay is not None and c < len(overlay):
                    ax.plot(np.asarray(overlay[c], dtype=float).reshape(-1), lw=1.0, color="tab:orange")
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    return fig


def reconstructions(inputs: np.ndarray, outputs: np.ndarray) -> Figure | None:
    """An autoencoder's held-out inputs (top row) above their reconstructions (bottom row);
    for signals, each input (blue) with its reconstruction (orange) on one axes.

    Example
    -------
    >>> x = np.random.default_rng(0).random((4, 1, 8, 8))
    >>> reconstructions(x, x * 0.9) is not None, reconstructions(x[:, 0, 0], x[:, 0, 0]) is not None
    (True, True)
    """
    if len(inputs) == 0:
        return None
    images_in, images_out = _as_images(inputs), _as_images(outputs)
    if images_in is not None and images_out is not None:
        n = min(len(images_in), MAX_FILTERS // 2, 16)
        return _image_grid(np.concatenate([images_in[:n], images_out[:n]]))  # 16 to a row: inputs, then outputs
    return _signal_rows([inputs[:8]], ["input / output"], overlay=outputs[:8])


def samples_over_training(epochs: Sequence[int], samples: np.ndarray) -> Figure | None:
    """A GAN's examples for the same fixed noise, one row per kept epoch (the first at the top).

    Example
    -------
    >>> samples_over_training([1, 5], np.random.default_rng(0).random((2, 8, 1, 8, 8))) is not None
    True
    """
    if len(epochs) == 0:
        return None
    shown = min(samples.shape[1], 16)
    images = _as_images(samples[:, :shown].reshape(-1, *samples.shape[2:]))
    if images is not None:
        return _image_grid(images)  # 16 to a row: one row per epoch when 16 are kept
    return _signal_rows([s[:8] for s in samples], [f"epoch {e}" for e in epochs])


def gan_curves(history: Sequence[dict[str, Any]], mark_epoch: int | None = None) -> Figure | None:
    """A GAN's epochs: the two losses, D's mean probability of 'real' on real and generated
    examples, and the generator's diversity (1: as varied as the data).

    Example
    -------
    >>> h = [{"epoch": e, "d_loss": 1.2, "g_loss": 0.9, "d_real": 0.6, "d_fake": 0.4, "diversity": 0.9} for e in (1, 2)]
    >>> len(gan_curves(h).axes)
    3
    """
    epochs = [r for r in history if "d_loss" in r]
    if not epochs:
        return None
    fig, axes = _new(10.5, 2.6, cols=3, top=0.35)
    panels = [(("d_loss", "discriminator"), ("g_loss", "generator")), (("d_real", "D(x), real"), ("d_fake", "D(G(z)), generated")),
              (("diversity", "diversity"),)]
    titles = ("losses", "discriminator's P(real)", "diversity (1: spread like the data)")
    for ax, lines, title in zip(axes[0], panels, titles, strict=True):
        for key, label in lines:
            x, y = _series(epochs if key != "diversity" else history, key, "epoch")
            if x:
                ax.plot(x, y, lw=1.3, label=label, marker="." if len(x) < 20 else None)
        if mark_epoch is not None:
            ax.axvline(mark_epoch, color="tab:red", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


__all__ = ["DPI", "HEALTHY_BAND", "HEALTHY_UPDATE_RATIO", "PNG_SIGNATURE", "activation_histograms", "count_zeros",
           "first_layer_weights", "gan_curves", "input_wait_curve", "layer_names", "layer_series", "loss_curves", "lr_curve",
           "monitor_loss", "overlaid_curves", "png_bytes", "reconstructions", "samples_over_training", "zero_floor"]
