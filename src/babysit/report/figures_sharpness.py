"""The sharpness figure: λmax over the steps against the optimizer's stability threshold.

Drawn from ``sharpness.jsonl`` (``checks.sharpness_every``; see
:class:`babysit.train.callbacks.sharpness.SharpnessCallback`). The picture of Cohen et al.
(2021, arXiv 2103.00065, fig. 1): the sharpness rises (progressive sharpening) until it
meets 2/η, then hovers there (the edge of stability). The threshold is drawn as a step line,
so it follows an lr schedule; for Adam and the other adaptive methods both lines are the
preconditioned ones, λmax(P⁻¹H) against (2+2β₁)/((1−β₁)η) (Cohen et al. 2022).

Example
-------
>>> from babysit.report.figures import png_bytes, PNG_SIGNATURE
>>> records = [{"step": 10 * i, "lambda_max": min(2.0 * i, 19.0), "threshold": 20.0, "lr": 0.1,
...             "rule": "2/η", "quantity": "λmax(H)"} for i in range(1, 20)]
>>> png_bytes(sharpness_figure(records))[:8] == PNG_SIGNATURE
True
>>> sharpness_figure([]) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from babysit.checks.sharpness import EDGE_RATIO
from babysit.report.figures import _finite, _new

LAMBDA_COLOUR = "tab:blue"
THRESHOLD_COLOUR = "tab:red"


def sharpness_figure(records: Sequence[dict[str, Any]]) -> Figure | None:
    """λmax (or λmax(P⁻¹H)) per sampled step, with the stability threshold as a dashed step
    line and the band the edge-of-stability finding uses (:data:`EDGE_RATIO` of it) shaded; None when no
    sample has a finite λmax."""
    rows = [r for r in records if isinstance(r.get("step"), int) and "lambda_max" in r]
    values = _finite([r["lambda_max"] for r in rows])
    if not any(math.isfinite(v) for v in values):
        return None
    steps = [r["step"] for r in rows]
    thresholds = _finite([r.get("threshold") for r in rows])
    quantity = next((r["quantity"] for r in rows if r.get("quantity")), "λmax(H)")
    rules = [r["rule"] for r in rows if r.get("rule") and r.get("rule") != "none"]
    fig, axes = _new(5.5, 2.8)
    ax = axes[0][0]
    ax.plot(steps, values, color=LAMBDA_COLOUR, lw=1.4, marker="." if len(steps) <= 60 else None,
            label=f"sharpness {quantity}")
    if any(math.isfinite(t) for t in thresholds):
        ax.step(steps, thresholds, where="post", color=THRESHOLD_COLOUR, ls="--", lw=1.2,
                label=f"threshold {rules[-1] if rules else ''}".strip())
        band = [EDGE_RATIO * t for t in thresholds]
        ax.fill_between(steps, band, thresholds, step="post", color=THRESHOLD_COLOUR, alpha=0.08,
                        label=f"edge of stability (≥ {EDGE_RATIO:g}x)")
    else:
        note = next((r["note"] for r in rows if r.get("note")), "no stability threshold for this optimizer")
        ax.set_title(note, fontsize=8)
    finite = [v for v in values + thresholds if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(quantity)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


__all__ = ["sharpness_figure"]
