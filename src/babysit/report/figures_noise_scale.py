"""The report's figure of the gradient noise scale (``noise_scale.jsonl``, written with
``checks.noise_scale: true``; McCandlish et al. 2018, arXiv 1812.06162).

B_noise is the batch at which a batch gradient's noise equals its signal (about the critical
batch size): the figure draws it over training against the run's batch, with the band within
which neither ``batch_too_small`` nor ``batch_too_large`` is found and the later part of the
run those findings judge (:func:`babysit.checks.noise_scale.later_noise_scale`).

Example
-------
>>> records = [{"step": s, "b_noise": 20.0 * s ** 0.5, "g2": 1.0, "trace_sigma": 20.0 * s ** 0.5, "batch": 32}
...            for s in range(1, 400, 10)]
>>> fig = noise_scale_figure(records)
>>> fig.axes[0].get_yscale()
'log'
>>> noise_scale_figure([]) is None
True
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from matplotlib.figure import Figure

from babysit.checks.noise_scale import FACTOR, later_noise_scale
from babysit.report.figures import _new, _positive, _series


def noise_scale_figure(records: list[dict[str, Any]]) -> Figure | None:
    """B_noise (from the moving averages) per step on a log axis, the run's batch as a line,
    the band from batch / 10 to 10 x batch (no finding there) and the findings' window with
    its B_noise; None when no sample has a finite B_noise."""
    x, y = _series(records, "b_noise", "step")
    y = _positive(y)
    if not any(v == v for v in y):
        return None
    batches = [r["batch"] for r in records if isinstance(r.get("batch"), int)]
    batch = Counter(batches).most_common(1)[0][0] if batches else None  # the last batch of an epoch may be smaller
    fig, axes = _new(5.2, 2.6)
    ax = axes[0][0]
    if batch is not None:
        ax.axhspan(batch / FACTOR, batch * FACTOR, color="tab:green", alpha=0.10,
                   label=f"batch/{FACTOR:g} to {FACTOR:g}x batch: no finding")
        ax.axhline(batch, color="tab:green", lw=1.2, ls="--", label=f"batch size {batch}")
    ax.plot(x, y, color="tab:blue", lw=1.4, marker="." if len(x) < 20 else None, label="B_noise (moving average)")
    later = later_noise_scale(records)
    if later is not None and math.isfinite(later["b_noise"]) and later["b_noise"] > 0:
        ax.plot([later["from_step"], later["to_step"]], [later["b_noise"]] * 2, color="tab:red", lw=2.2,
                label=f"judged: {later['b_noise']:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("B_noise = tr(Σ) / |G|²")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


__all__ = ["noise_scale_figure"]
