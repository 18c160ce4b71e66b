"""Input-bound training: ``input_bound``, the step waits for its data.

At the steps the monitors sample (every ``checks.every`` steps) the training loop reads the
clock before and after fetching the batch and again when the step is done (no device sync;
:class:`babysit.train.loop.Trainer`'s ``input_wait_every``). Each epoch's record in
``metrics.jsonl`` gets ``input_wait``, the fraction of those steps' time spent waiting for the
batch, and ``input_wait_samples``, how many steps were timed. When the whole run's sampled steps
spent more than 30% of their time waiting, the device idles while the data loads: more loader
workers, or the data set in memory, buys speed without touching the model (PyTorch's
performance tuning guide: asynchronous loading with ``num_workers > 0`` and pinned memory).

Example
-------
>>> metrics = [{"epoch": 1, "step": 50, "input_wait": 0.6, "input_wait_samples": 5},
...            {"epoch": 2, "step": 100, "input_wait": 0.5, "input_wait_samples": 5}]
>>> found = input_bound_findings(metrics)
>>> found[0].id, found[0].evidence["input_wait"], found[0].evidence["sampled_steps"]
('input_bound', 0.55, 10)
>>> input_bound_findings([{"epoch": 1, "input_wait": 0.02, "input_wait_samples": 40}])
[]
"""

from __future__ import annotations

import math
from typing import Any

from babysit.checks.findings import Finding

# the bar: waiting for data takes more than 30% of step time over the sampled steps
INPUT_WAIT_FRACTION = 0.30
# fewer timed steps than this say nothing either way (a run's first step pays for warm-up)
MIN_SAMPLES = 5


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def input_bound_findings(metrics: list[dict[str, Any]]) -> list[Finding]:
    """``input_bound`` (warning) when the run's sampled steps spent more than 30% of their time
    waiting for the next batch, over at least 5 sampled steps; each epoch's fraction weighs by
    its number of sampled steps. A run without timings (``input_wait``): nothing."""
    epochs = [r for r in metrics if isinstance(r, dict) and "epoch" in r and _number(r.get("input_wait"))
              and _number(r.get("input_wait_samples")) and r["input_wait_samples"] > 0]
    samples = sum(int(r["input_wait_samples"]) for r in epochs)
    if samples < MIN_SAMPLES:
        return []
    fraction = sum(r["input_wait"] * r["input_wait_samples"] for r in epochs) / samples
    if fraction <= INPUT_WAIT_FRACTION:
        return []
    worst = max(epochs, key=lambda r: r["input_wait"])
    evidence = {"input_wait": round(fraction, 4), "threshold": INPUT_WAIT_FRACTION, "sampled_steps": samples,
                "epochs": len(epochs), "worst_epoch": worst["epoch"], "worst_epoch_input_wait": round(worst["input_wait"], 4)}
    return [Finding(
        "input_bound", "warning",
        f"Training waits for its data: {fraction:.0%} of the time of the {samples} sampled steps (over "
        f"{len(epochs)} epochs) went to fetching the next batch (the bar is {INPUT_WAIT_FRACTION:.0%}); the device "
        "sits idle meanwhile.",
        "Feed it faster: more DataLoader workers (data.workers) to load and decode batches in parallel, or keep the "
        "data set in memory, babysit's fast path, by raising data.in_memory_limit above its size; a network this "
        "quick also takes a larger batch (data.batch_size).",
        evidence)]


__all__ = ["INPUT_WAIT_FRACTION", "MIN_SAMPLES", "input_bound_findings"]
