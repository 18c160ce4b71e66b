"""The label-issues figure: the training examples confident learning suspects of a wrong label.

Drawn from ``label_issues.json``'s ``suspects`` (most suspect first, written after the run by
:func:`babysit.checks.label_noise.write_label_issues`) and ``label_issues.npz`` (the top suspects'
inputs ``x`` in the data's own units), or from the run's splits themselves. Images are drawn as
images, 1-D signals as small line plots; each with its training index, the label it was given,
the class the held-out networks put it in and their probability for it. Northcutt, Athalye &
Mueller (2021, arXiv 2103.14749, labelerrors.com) show label errors the same way.

Example
-------
>>> import numpy as np
>>> from babysit.report.figures import png_bytes, PNG_SIGNATURE
>>> issues = [{"index": 12, "given": 3, "predicted": 8, "confidence": 0.97, "self_confidence": 0.01}]
>>> x = np.random.default_rng(0).random((1, 1, 8, 8))
>>> png_bytes(label_issues_figure(issues, {"x": x}))[:8] == PNG_SIGNATURE
True
>>> label_issues_figure([], {"x": x}) is None
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

MAX_SHOWN = 16  # the suspects label_issues.npz keeps (babysit.checks.label_noise.SHOWN_SUSPECTS)
IMAGE_COLUMNS = 8
SIGNAL_COLUMNS = 4
SIGNAL_COLOUR = "tab:red"


def _name(issue: Mapping[str, Any], side: str) -> str:
    """The class as the report names it: its name when label_issues.json has one, else its id."""
    return str(issue.get(f"{side}_name", issue.get(side, "?")))


def _caption(issue: Mapping[str, Any]) -> str:
    """``#12\\ngiven 3\\nlooks 8 (0.97)``."""
    confidence = issue.get("confidence")
    p = f" ({float(confidence):.2f})" if isinstance(confidence, int | float) else ""
    return f"#{issue.get('index')}\ngiven {_name(issue, 'given')}\nlooks {_name(issue, 'predicted')}{p}"


def _examples(issues: Sequence[Mapping[str, Any]], data: Splits | Mapping[str, Any]) -> np.ndarray:
    """The suspects' inputs (k, *shape): ``label_issues.npz``'s ``x``, or gathered from the training
    split by index with the preprocessing undone."""
    if isinstance(data, Splits):
        pre = data.preprocessor
        undo = pre.inverse_transform if pre is not None and pre.fitted is not None else (lambda t: t)
        index = torch.tensor([int(i["index"]) for i in issues], device=data.train.x.device)
        return undo(data.train.x[index].detach().float()).cpu().numpy()
    return np.asarray(data["x"], dtype=float)[:len(issues)]


def label_issues_figure(issues: Sequence[Mapping[str, Any]], data: Splits | Mapping[str, Any]) -> Figure | None:
    """The first :data:`MAX_SHOWN` of ``issues`` (label_issues.json's ``suspects``: most suspect
    first), each drawn with its index, given label and the class the held-out networks chose with
    their probability. ``data``: the arrays ``{"x": ...}`` of ``label_issues.npz``, or the run's
    :class:`~babysit.data.Splits`. None when there is no suspect."""
    issues = list(issues)[:MAX_SHOWN]
    if not issues:
        return None
    x = _examples(issues, data)
    count = min(len(issues), len(x))
    if count == 0:
        return None
    issues, x = issues[:count], x[:count]
    images = _as_images(x)
    if images is not None:
        cols = min(count, IMAGE_COLUMNS)
        rows = -(-count // cols)
        fig, axes = _new(1.15 * cols + 0.9, 1.75 * rows + 0.3, cols=cols, rows=rows, top=0.75)
        fig.subplots_adjust(hspace=0.9)
        for index in range(rows * cols):
            ax = axes[index // cols][index % cols]
            ax.set_xticks([])
            ax.set_yticks([])
            if index >= count:
                ax.set_axis_off()
                continue
            image = images[index]
            lo, hi = float(image.min()), float(image.max())
            shown = (image - lo) / (hi - lo) if hi > lo else np.full_like(image, 0.5)
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(_caption(issues[index]), fontsize=6.5)
        return fig
    cols = min(count, SIGNAL_COLUMNS)
    rows = -(-count // cols)
    fig, axes = _new(2.3 * cols + 0.6, 1.8 * rows + 0.4, cols=cols, rows=rows, top=0.35)
    fig.subplots_adjust(hspace=0.6)
    for index in range(rows * cols):
        ax = axes[index // cols][index % cols]
        if index >= count:
            ax.set_axis_off()
            continue
        ax.plot(np.asarray(x[index], dtype=float).reshape(-1), lw=1.2, color=SIGNAL_COLOUR)
        ax.set_title(_caption(issues[index]).replace("\n", ", "), fontsize=6.5)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    return fig


__all__ = ["label_issues_figure"]
