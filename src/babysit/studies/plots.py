"""The studies' figures: a few small matplotlib (Agg) figures, built without pyplot.

Example
-------
>>> from babysit.report.figures import PNG_SIGNATURE, png_bytes
>>> fig = curves_figure({"a": ([1, 2, 3], [1.0, 0.5, 0.2])}, "steps", "loss", log_y=True)
>>> png_bytes(fig)[:8] == PNG_SIGNATURE
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure


def _clean(xs: Sequence[float], ys: Sequence[float], log_x: bool, log_y: bool) -> tuple[list[float], list[float]]:
    """Points a log axis can show (positive), with non-finite values dropped."""
    keep = [(x, y) for x, y in zip(xs, ys, strict=True)
            if y is not None and math.isfinite(y) and (not log_x or x > 0) and (not log_y or y > 0)]
    return [x for x, _ in keep], [y for _, y in keep]


def curves_figure(curves: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, *,
                  title: str = "", hline: float | None = None, log_x: bool = False, log_y: bool = False,
                  width: float = 6.4, height: float = 3.8) -> Figure:
    """One line per named series ``name -> (xs, ys)``; ``hline`` marks a target."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in curves.items():
        x, y = _clean(xs, ys, log_x, log_y)
        if x:  # a run of a few points (L-BFGS, Newton) gets markers, so a single point shows
            ax.plot(x, y, label=name, linewidth=1.4, marker="o" if len(x) < 8 else None, markersize=3)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def panels_figure(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], xlabel: str, ylabel: str, *,
                  log_y: bool = False, log_x: bool = False, title: str = "") -> Figure:
    """Side-by-side panels (one per key of ``panels``), each with its named series."""
    fig = Figure(figsize=(4.6 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, curves) in zip(axes, panels.items(), strict=True):
        for name, (xs, ys) in curves.items():
            x, y = _clean(xs, ys, log_x, log_y)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=name, linewidth=1.4)
        if log_y:
            ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig

