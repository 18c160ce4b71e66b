"""The report's figures of the model's answers (:mod:`babysit.checks.answers`).

- :func:`reliability_figure` (from calibration.json): the reliability diagram of Guo et al.
  2017 (arXiv 1706.04599, figure 1), accuracy per confidence bin against the diagonal a
  calibrated model follows, before and after temperature scaling;
- :func:`confusion_figure` (from summary.json's ``per_class``): the confusion matrix, rows
  normalised (each class's recall on the diagonal), and every class's recall against the
  mean and the ``weak_class`` bar.

Example
-------
>>> detail = {"temperature": 2.0, "bins": 15, "reliability": {
...     "test": {"count": [0] * 13 + [10, 80, 10], "confidence": [None] * 13 + [0.9, 0.96, 1.0],
...              "accuracy": [None] * 13 + [0.6, 0.8, 0.9], "ece": 0.15},
...     "test_scaled": {"count": [0] * 10 + [20, 30, 50, 0, 0, 0], "confidence": [None] * 10 + [0.7, 0.76, 0.82] + [None] * 3,
...                     "accuracy": [None] * 10 + [0.68, 0.8, 0.83] + [None] * 3, "ece": 0.02}}}
>>> len(reliability_figure(detail).axes)
2
>>> per_class = {"val": {"support": [5, 5], "recall": [1.0, 0.4], "mean_recall": 0.7, "confusion": [[5, 0], [3, 2]]}}
>>> len(confusion_figure({"per_class": per_class}).axes)
3
>>> reliability_figure({}) is None, confusion_figure({}) is None
(True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from babysit.checks.answers import WEAK_CLASS_FRACTION
from babysit.report.figures import _new

ANNOTATED_CLASSES = 12  # counts written in the cells up to this many classes
_SPLIT_COLOURS = {"val": "tab:orange", "test": "tab:blue"}


def _reliability_panel(ax: Any, bins: dict[str, Any], n_bins: int, title: str) -> None:
    """One reliability diagram: accuracy per bin (bars), the gap to the bin's mean confidence, the diagonal."""
    count, confidence, accuracy = bins.get("count") or [], bins.get("confidence") or [], bins.get("accuracy") or []
    width = 1.0 / n_bins
    rows = [(k, c, a) for k, (n, c, a) in enumerate(zip(count, confidence, accuracy, strict=False))
            if n and c is not None and a is not None]
    regular = [(k, c, a) for k, c, a in rows if k < n_bins]
    centers = [(k + 0.5) * width for k, _, _ in regular]
    ax.bar(centers, [a for _, _, a in regular], width=width, color="tab:blue", edgecolor="black", lw=0.5,
           label="accuracy")
    ax.bar(centers, [c - a for _, c, a in regular], bottom=[a for _, _, a in regular], width=width,
           color="tab:red", alpha=0.3, edgecolor="tab:red", lw=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="calibrated")
    saturated = [(a, count[k]) for k, _, a in rows if k == n_bins]  # confidence exactly 1.0 (its own bin)
    if saturated:
        a, n = saturated[0]
        ax.plot([1.0], [a], marker="D", color="black", ls="none", ms=4, label=f"confidence 1.0 ({n})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def reliability_figure(calibration: dict[str, Any]) -> Figure | None:
    """The test split's reliability diagram (validation without a test split) before and after
    temperature scaling, from calibration.json; None when it holds no reliability data."""
    reliability = calibration.get("reliability") if isinstance(calibration, dict) else None
    if not isinstance(reliability, dict):
        return None
    split = next((s for s in ("test", "val") if isinstance(reliability.get(s), dict)), None)
    if split is None:
        return None
    n_bins = int(calibration.get("bins") or 15)
    scaled = reliability.get(f"{split}_scaled")
    panels = [(reliability[split], f"{split}: ECE {reliability[split].get('ece', float('nan')):.3f}")]
    if isinstance(scaled, dict):
        t = calibration.get("temperature")
        panels.append((scaled, f"{split}, logits / {t:.3g} (T fitted on val): ECE {scaled.get('ece', float('nan')):.3f}"))
    fig, axes = _new(3.8 * len(panels), 3.2, cols=len(panels), top=0.3)
    for ax, (bins, title) in zip(axes[0], panels, strict=True):
        _reliability_panel(ax, bins, n_bins, title)
    return fig


def confusion_figure(summary: dict[str, Any]) -> Figure | None:
    """The confusion matrix of the test split (else validation), rows normalised, and each
    class's recall on validation and test with the mean and the weak_class bar, from
    summary.json's ``per_class``; None without it."""
    per_class = summary.get("per_class") if isinstance(summary, dict) else None
    if not isinstance(per_class, dict):
        return None
    views = {s: v for s in ("val", "test") if isinstance(v := per_class.get(s), dict) and isinstance(v.get("recall"), list)}
    if not views:
        return None
    shown = "test" if "test" in views else "val"
    confusion = views[shown].get("confusion")
    has_matrix = isinstance(confusion, list) and len(confusion) > 0
    fig, axes = _new(8.5 if has_matrix else 4.5, 3.6, cols=2 if has_matrix else 1, top=0.3)
    recall_ax = axes[0][-1]
    names = per_class.get("classes")
    classes = len(views[shown]["recall"])
    labels = [str(n) for n in names] if isinstance(names, list) and len(names) == classes else [str(k) for k in range(classes)]
    if has_matrix:
        ax = axes[0][0]
        counts = np.asarray(confusion, dtype=float)
        rows = counts.sum(1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        if classes <= ANNOTATED_CLASSES:
            for i in range(classes):
                for j in range(classes):
                    if counts[i, j]:
                        ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6,
                                color="white" if share[i, j] > 0.5 else "black")
        ticks = range(classes) if classes <= 2 * ANNOTATED_CLASSES else []
        ax.set_xticks(list(ticks), [labels[k] for k in ticks], fontsize=7)
        ax.set_yticks(list(ticks), [labels[k] for k in ticks], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{shown}: confusion (rows sum to 1)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    offset = 0.4 / len(views)
    for i, (name, view) in enumerate(views.items()):
        x = np.arange(classes) + (i - (len(views) - 1) / 2) * offset
        recall = [r if isinstance(r, int | float) else np.nan for r in view["recall"]]
        recall_ax.bar(x, recall, width=offset, color=_SPLIT_COLOURS[name], label=name)
    mean = views["val" if "val" in views else shown].get("mean_recall")
    if isinstance(mean, int | float):
        recall_ax.axhline(mean, color="black", lw=1, label=f"mean recall ({'val' if 'val' in views else shown})")
        recall_ax.axhline(WEAK_CLASS_FRACTION * mean, color="tab:red", ls=":", lw=1, label="weak_class bar")
    recall_ax.set_ylim(0, 1.3)  # room for the legend above the bars
    recall_ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ticks = range(classes) if classes <= 2 * ANNOTATED_CLASSES else []
    recall_ax.set_xticks(list(ticks), [labels[k] for k in ticks], fontsize=7)
    recall_ax.set_xlabel("class")
    recall_ax.set_ylabel("recall")
    recall_ax.set_title("per-class accuracy (recall)", fontsize=9)
    recall_ax.grid(alpha=0.3, axis="y")
    recall_ax.legend(fontsize=6, loc="upper center", ncol=2, frameon=False)
    return fig


__all__ = ["confusion_figure", "reliability_figure"]
