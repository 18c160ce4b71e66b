"""The leakage figure: the closest duplicate pairs between splits, side by side.

Drawn from ``leakage.json`` (its ``shown`` pairs, written before training by the family's
preflight, :func:`babysit.checks.data_checks.write_leakage`) and ``leakage.npz`` (those pairs'
examples ``a`` and ``b`` in the data's own units), or from the run's splits themselves. Images
are drawn as images, one column per pair (the earlier split's example on top, the duplicate
below); anything else as 1-D signals, each pair's two examples overlaid on one axes. Barz &
Denzler (2020, arXiv 1902.00423) show CIFAR's duplicates the same way.

Example
-------
>>> import numpy as np
>>> from babysit.report.figures import png_bytes, PNG_SIGNATURE
>>> pairs = [{"a": "train", "index_a": 4, "b": "test", "index_b": 0, "cosine": 1.0, "exact": True}]
>>> x = np.random.default_rng(0).random((1, 1, 8, 8))
>>> png_bytes(leakage_figure(pairs, {"a": x, "b": x}))[:8] == PNG_SIGNATURE
True
>>> leakage_figure([], {"a": x, "b": x}) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from babysit.data import Splits
from babysit.report.figures import _as_images, _new

A_COLOUR = "tab:blue"
B_COLOUR = "tab:orange"
MAX_PAIRS = 8


def _caption(pair: Mapping[str, Any]) -> str:
    """``test #5\\ntrain #812\\n= (identical)`` or ``~ 0.9962``, with labels when known."""
    how = "identical" if pair.get("exact") else f"cos {float(pair.get('cosine', float('nan'))):.4f}"
    labels = f"\nlabels {pair['label_b']} / {pair['label_a']}" if "label_a" in pair and "label_b" in pair else ""
    return f"{pair.get('b')} #{pair.get('index_b')}\n{pair.get('a')} #{pair.get('index_a')}\n{how}{labels}"


def _examples(pairs: Sequence[Mapping[str, Any]], data: Splits | Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs' two examples, (k, *shape) each: from ``leakage.npz``'s arrays, or gathered from
    the splits by index with the preprocessing undone."""
    if isinstance(data, Splits):
        pre = data.preprocessor
        undo = pre.inverse_transform if pre is not None and pre.fitted is not None else (lambda t: t)

        def gather(side: str) -> np.ndarray:
            rows = torch.stack([getattr(data, p[side]).x[int(p[f"index_{side}"])] for p in pairs])
            return undo(rows.detach().cpu().float()).numpy()

        return gather("a"), gather("b")
    return np.asarray(data["a"], dtype=float)[:len(pairs)], np.asarray(data["b"], dtype=float)[:len(pairs)]


def leakage_figure(pairs: Sequence[Mapping[str, Any]], data: Splits | Mapping[str, Any]) -> Figure | None:
    """The first :data:`MAX_PAIRS` of ``pairs`` (leakage.json's ``shown``: closest first) side by
    side: images as images (top: the earlier split's example, below: its duplicate), other inputs
    as overlaid 1-D signals (blue: earlier split, orange dashed: the duplicate). ``data``: the
    arrays ``{"a": ..., "b": ...}`` of ``leakage.npz``, or the run's :class:`~babysit.data.Splits`.
    None when there is no pair."""
    pairs = list(pairs)[:MAX_PAIRS]
    if not pairs:
        return None
    a, b = _examples(pairs, data)
    count = min(len(pairs), len(a), len(b))
    if count == 0:
        return None
    pairs, a, b = pairs[:count], a[:count], b[:count]
    images_a, images_b = _as_images(a), _as_images(b)
    if images_a is not None and images_b is not None:
        fig, axes = _new(1.25 * count + 0.9, 3.6, cols=count, rows=2, top=0.75)
        for c, pair in enumerate(pairs):
            for r, image in enumerate((images_a[c], images_b[c])):
                ax = axes[r][c]
                lo, hi = float(image.min()), float(image.max())
                shown = (image - lo) / (hi - lo) if hi > lo else np.full_like(image, 0.5)
                ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[0][c].set_title(_caption(pair), fontsize=6.5)
        axes[0][0].set_ylabel("earlier split", fontsize=7)
        axes[1][0].set_ylabel("duplicate", fontsize=7)
        return fig
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = _new(2.3 * cols + 0.6, 1.9 * rows + 0.3, cols=cols, rows=rows, top=0.15)
    for index in range(rows * cols):
        ax = axes[index // cols][index % cols]
        if index >= count:
            ax.set_axis_off()
            continue
        ax.plot(np.asarray(a[index], dtype=float).reshape(-1), lw=1.2, color=A_COLOUR, label=pairs[index].get("a"))
        ax.plot(np.asarray(b[index], dtype=float).reshape(-1), lw=1.2, ls="--", color=B_COLOUR,
                label=pairs[index].get("b"))
        ax.set_title(_caption(pairs[index]).replace("\n", ", ", 1).replace("\n", " "), fontsize=6.5)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=6, loc="best")
    return fig


__all__ = ["leakage_figure"]
