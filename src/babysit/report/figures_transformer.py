"""The transformer-health figure (``checks.transformer``), drawn from ``transformer.jsonl``.

Four panels over the sampled steps, a line per block: the sharpest head's attention entropy
as a fraction of ln T, with the collapse bar (Zhai et al. 2023: 10% of ln T); the largest
attention logit, with the saturation bar (Wortsman et al. 2023); the output logits' |log Z|
with its bar; the residual stream's RMS per token after each block. The bars are the ones
:mod:`babysit.checks.transformer` uses.

Example
-------
>>> records = [{"step": s, "T": 16, "log_z": 4.0 + s / 100,
...             "blocks": [{"entropy": [2.0, 1.5], "max_logit": 1 + s / 10, "rms": 1.0}]} for s in (1, 10, 20)]
>>> len(transformer_figure(records).axes)
4
>>> transformer_figure([]) is None
True
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from babysit.checks.transformer import ATTENTION_LOGIT_BAR, COLLAPSE_FRACTION, LOG_Z_BAR
from babysit.report.figures import MAX_LAYERS, _finite, _new, _positive


def _block_series(records: list[dict[str, Any]], value: Any) -> list[tuple[list[int], list[float]]]:
    """Per block (the first MAX_LAYERS), the steps and ``value(record, block)`` (NaN where missing)."""
    blocks = max((len(r["blocks"]) for r in records), default=0)
    series = []
    for b in range(min(blocks, MAX_LAYERS)):
        rows = [r for r in records if b < len(r["blocks"]) and isinstance(r["blocks"][b], dict)]
        series.append(([r["step"] for r in rows], _finite([value(r, r["blocks"][b]) for r in rows])))
    return series


def _min_entropy_fraction(record: dict[str, Any], block: dict[str, Any]) -> float | None:
    entropies = [e for e in block.get("entropy") or [] if isinstance(e, int | float) and math.isfinite(e)]
    T = record.get("T")
    if not entropies or not isinstance(T, int) or T < 2:
        return None
    return min(entropies) / math.log(T)


def transformer_figure(records: list[dict[str, Any]]) -> Figure | None:
    """Attention entropy, attention logits, log Z and residual RMS over steps; None without records."""
    records = [r for r in records if isinstance(r.get("step"), int) and isinstance(r.get("blocks"), list)]
    if not records:
        return None
    fig, axes = _new(8.0, 5.0, cols=2, rows=2, top=0.25)
    (entropy_ax, logit_ax), (z_ax, rms_ax) = axes
    marker = "." if len(records) < 20 else None
    panels = [
        (entropy_ax, _block_series(records, _min_entropy_fraction), "min head entropy / ln T", False),
        (logit_ax, _block_series(records, lambda r, b: b.get("max_logit")), "max attention logit", True),
        (rms_ax, _block_series(records, lambda r, b: b.get("rms")), "residual RMS", True),
    ]
    for ax, series, label, log in panels:
        for b, (x, y) in enumerate(series):
            ax.plot(x, _positive(y) if log else y, lw=1.2, marker=marker, label=f"block {b}")
        if log and any(v > 0 for _, y in series for v in y if v == v):
            ax.set_yscale("log")
        ax.set_ylabel(label)
    entropy_ax.axhline(COLLAPSE_FRACTION, color="tab:red", ls=":", lw=1, label="collapse bar")
    entropy_ax.set_ylim(0, 1)
    logit_ax.axhline(ATTENTION_LOGIT_BAR, color="tab:red", ls=":", lw=1, label="saturation bar")
    z = [(r["step"], abs(v)) for r in records if isinstance(v := r.get("log_z"), int | float) and math.isfinite(v)]
    z_ax.plot([s for s, _ in z], [v for _, v in z], color="black", lw=1.2, marker=marker, label="|log Z|")
    z_ax.axhline(LOG_Z_BAR, color="tab:red", ls=":", lw=1, label="bar")
    z_ax.set_ylabel("output |log Z|")
    z_ax.set_ylim(bottom=0)
    for ax in (entropy_ax, logit_ax, z_ax, rms_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig


__all__ = ["transformer_figure"]
