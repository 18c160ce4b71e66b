"""Figures of the loss landscape (matplotlib, Agg, built with ``Figure()``: no pyplot state).

- :func:`surface_figure`: a 2D loss surface as filled contours and as a 3D surface, the
  trained weights marked at the centre (Li et al. 2018, figures 1 and 5);
- :func:`curves_figure`: 1D loss curves through the trained weights;
- :func:`spectral_density_figure`: the smoothed SLQ eigenvalue density on a log axis
  (Ghorbani et al. 2019, figure 1), with the extreme eigenvalues marked;
- :func:`eigenvalue_bars`: the top-k and bottom-k eigenvalues with their residuals;
- :func:`interpolation_figure`: the loss along a straight line between two weights;
- :func:`trajectory_figure`: contours along the trajectory's PCA directions with the path.

Each returns a :class:`matplotlib.figure.Figure`; :func:`babysit.report.figures.png_bytes`
turns it into PNG bytes.

Example
-------
>>> import torch
>>> from babysit.report.figures import png_bytes, PNG_SIGNATURE
>>> alphas = torch.linspace(-1, 1, 5, dtype=torch.float64)
>>> fig = curves_figure({"random direction 1": (alphas, alphas**2)}, center_loss=0.0)
>>> png_bytes(fig)[:8] == PNG_SIGNATURE
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "curves_figure",
    "eigenvalue_bars",
    "interpolation_figure",
    "spectral_density_figure",
    "surface_figure",
    "trajectory_figure",
]


def _levels(losses: np.ndarray, count: int = 30) -> np.ndarray:
    """Contour levels spaced in log(loss - min): the basin floor gets as many lines as the
    walls (Li et al. draw their contours the same way, log-spaced)."""
    low, high = float(np.nanmin(losses)), float(np.nanmax(losses))
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return np.linspace(low - 1e-12, low + 1e-12, 3)
    offsets = np.geomspace(max((high - low) * 1e-4, 1e-300), high - low, count)
    return np.unique(low + np.concatenate([[0.0], offsets]))


def _grid(surface: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = surface.coordinates[0].numpy()
    b = surface.coordinates[1].numpy()
    # losses[i, j] is at (a[i], b[j]): a on the x axis, b on the y axis
    aa, bb = np.meshgrid(a, b, indexing="ij")
    return aa, bb, np.clip(surface.losses.numpy(), None, np.finfo(np.float64).max)


def _contours(ax: Any, aa: np.ndarray, bb: np.ndarray, zz: np.ndarray) -> Any:
    """Filled contours of the loss with thin white level lines; returns the filled set (for a colour bar)."""
    levels = _levels(zz)
    filled = ax.contourf(aa, bb, zz, levels=levels, cmap="viridis")
    ax.contour(aa, bb, zz, levels=levels, colors="white", linewidths=0.4, alpha=0.5)
    return filled


def surface_figure(surface: Any, title: str = "", axis_names: tuple[str, str] = ("direction 1", "direction 2")) -> Figure:
    """A 2D :class:`~babysit.landscape.surface.LossSurface` as contours and a 3D surface."""
    aa, bb, zz = _grid(surface)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    filled = _contours(ax, aa, bb, zz)
    ax.plot([0.0], [0.0], marker="*", color="red", markersize=12, label=f"trained weights (loss {surface.center_loss:.4g})")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(filled, ax=ax, label="loss", format="%.3g")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(aa, bb, zz, cmap="viridis", linewidth=0, antialiased=True, rcount=64, ccount=64)
    ax3.set_xlabel(axis_names[0])
    ax3.set_ylabel(axis_names[1])
    ax3.set_zlabel("loss")
    if title:
        fig.suptitle(title)
    return fig


def curves_figure(curves: dict[str, tuple[Tensor, Tensor]], center_loss: float) -> Figure:
    """1D loss curves ``{name: (alphas, losses)}`` through the trained weights (alpha = 0)."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, (alphas, losses) in curves.items():
        ax.plot(np.asarray(alphas), np.asarray(losses), label=name, marker=".", markersize=3)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.plot([0.0], [center_loss], marker="*", color="red", markersize=11, linestyle="none", label="trained weights")
    ax.set_xlabel("alpha (step along the direction, at the length of the filter-normalised ones)")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if min(float(torch.as_tensor(v[1]).min()) for v in curves.values()) > 0 else "linear")
    ax.set_title("1D loss curves through the trained weights")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def spectral_density_figure(density: Any, top: Any | None = None, bottom: Any | None = None) -> Figure:
    """The SLQ density (Gaussian-smoothed, log scale) with lambda_max / lambda_min marked."""
    nodes = density.nodes
    low, high = float(nodes.min()), float(nodes.max())
    pad = 0.05 * max(high - low, 1e-12)
    grid = torch.linspace(low - pad, high + pad, 1000, dtype=torch.float64)
    sigma = max(1e-12, 0.01 * (high - low))
    values = density.density(grid, sigma).numpy()
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(grid.numpy(), np.maximum(values, 1e-12), color="tab:blue")
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    if top is not None:
        ax.axvline(float(top.eigenvalues[0]), color="tab:red", linewidth=1, linestyle="--",
                   label=f"λmax {float(top.eigenvalues[0]):.4g}")
    if bottom is not None:
        ax.axvline(float(bottom.eigenvalues[0]), color="tab:purple", linewidth=1, linestyle="--",
                   label=f"λmin {float(bottom.eigenvalues[0]):.4g}")
    ax.set_ylim(bottom=max(1e-8, float(values[values > 0].min()) if (values > 0).any() else 1e-8))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (smoothed, σ = 1% of the range)")
    ax.set_title(f"Hessian eigenvalue density (SLQ: {density.runs} runs x {density.steps} Lanczos steps)")
    if top is not None or bottom is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def eigenvalue_bars(top: Any, bottom: Any | None = None) -> Figure:
    """The top-k (and bottom-k) eigenvalues as bars, each labelled with its residual."""
    groups = [("top", top)] + ([("bottom", bottom)] if bottom is not None else [])
    fig = Figure(figsize=(4.5 * len(groups), 3.8), layout="constrained")
    for at, (name, eig) in enumerate(groups, start=1):
        ax = fig.add_subplot(1, len(groups), at)
        values = [float(v) for v in eig.eigenvalues]
        colours = ["tab:blue" if v >= 0 else "tab:red" for v in values]
        bars = ax.bar(range(1, len(values) + 1), values, color=colours)
        for bar, residual in zip(bars, eig.residuals.tolist(), strict=True):
            ax.annotate(f"r={residual:.1e}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=7)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(1, len(values) + 1))
        ax.set_xlabel("index")
        ax.set_ylabel("eigenvalue")
        ax.set_title(f"{name}-{len(values)} Hessian eigenvalues (r: ||Hv - λv||)", fontsize=9)
    return fig


def interpolation_figure(line: Any, start: str, end: str) -> Figure:
    """The loss along theta(alpha) = (1 - alpha) theta_start + alpha theta_end, with the
    straight line between the end losses (the barrier is the largest rise above it)."""
    alphas, losses = line.alphas.numpy(), line.losses.numpy()
    l0, l1 = float(line.losses[line.alphas == 0.0][0]), float(line.losses[line.alphas == 1.0][0])
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(alphas, losses, marker=".", label="loss")
    ax.plot([0.0, 1.0], [l0, l1], color="grey", linestyle="--", linewidth=1, label="straight line between the ends")
    ax.set_xlabel(f"alpha: 0 = {start}, 1 = {end}")
    ax.set_ylabel("loss")
    ax.set_title(f"linear interpolation (barrier {line.barrier:.4g})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def trajectory_figure(surface: Any, coordinates: Tensor, steps: Sequence[int],
                      explained: Sequence[float]) -> Figure:
    """Contours along the top two PCA directions of the saved trajectory, the path of the
    snapshots drawn over them (Li et al. 2018, figure 9)."""
    fig = Figure(figsize=(6.5, 5.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    filled = _contours(ax, *_grid(surface))
    path = np.asarray(coordinates)
    ax.plot(path[:, 0], path[:, 1], color="red", marker="o", markersize=3, linewidth=1.2, label="training path")
    ax.annotate(f"step {steps[0]}", path[0], fontsize=8, color="white")
    ax.annotate(f"step {steps[-1]}", path[-1], fontsize=8, color="white")
    ax.plot([0.0], [0.0], marker="*", color="orange", markersize=12, linestyle="none", label="trained weights")
    ax.set_xlabel(f"PC1 ({explained[0]:.1%} of the path's variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.1%})")
    ax.set_title("loss along the training trajectory's principal directions")
    ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(filled, ax=ax, label="loss", format="%.3g")
    return fig
