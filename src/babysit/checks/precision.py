"""Mixed-precision health: ``fp16_overflow``.

fp16 holds magnitudes up to 65504 (IEEE 754 half precision) against fp32's 3.4e38. Under
``train.precision: fp16`` autocast runs the matrix products in fp16 and torch's
``GradScaler`` multiplies the loss by a scale (65536 at first) so that small gradients do not
underflow; a step whose gradients overflowed (inf or NaN) is skipped and the scale halved
(Micikevicius et al. 2018, "Mixed precision training", arXiv 1710.03740, section 3.2). Three
signs that the run is at fp16's ceiling, read from ``metrics.jsonl`` (``grad_scale`` and
``skipped_steps`` per epoch, which the loop writes under fp16) and from ``monitors.jsonl``
(``act_absmax``, the largest |output| of each fp16 layer at the sampled steps):

- the scale fell below 1: the gradients overflow even unscaled, so loss scaling can no longer
  help (the scale only falls when a step overflows);
- more than 5% of the steps were skipped, beyond the calibration: the first steps of a run are
  skipped while the scale halves from 65536 to one the gradients fit (up to 16 halvings to reach
  1; measured: 7 of the first 16 steps of a small MLP), which is the design; a steady stream
  beyond those means updates are being lost;
- an activation came within 2x of 65504: one more doubling (a larger lr, a longer run, a
  larger input) and it is inf.

Example
-------
>>> metrics = [{"epoch": 1, "step": 100, "grad_scale": 0.25, "skipped_steps": 24}]
>>> [f.id for f in precision_findings(metrics, [], precision="fp16")]
['fp16_overflow']
>>> precision_findings(metrics, [], precision="fp32")
[]
"""

from __future__ import annotations

import math
from typing import Any

from babysit.checks.findings import Finding

FP16_MAX = 65504.0  # the largest finite fp16 value, (2 - 2^-10) x 2^15
# GradScaler backs off (halves) on each overflowing step; below 1 the loss is being scaled
# *down*: the gradients overflow fp16 at their true size.
SCALE_FLOOR = 1.0
# the bar: more than 5% of the steps skipped, not counting the calibration: GradScaler
# starts at 2^16 and halves once per overflowing step, so reaching a scale of 1 costs at most 16
# skips (a scale below 1 is the first sign, above). Measured: a healthy 2-epoch MLP in fp16 on the
# CPU skips 7 of its first 16 steps while the scale falls to 2^9, and none after.
SKIPPED_FRACTION = 0.05
CALIBRATION_SKIPS = 16
# within 2x of fp16's largest value: one doubling from inf
ACTIVATION_MARGIN = 2.0


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def precision_findings(metrics: list[dict[str, Any]], monitors: list[dict[str, Any]], *,
                       precision: str) -> list[Finding]:
    """``fp16_overflow`` when an fp16 run's loss scale fell below 1, more than 5% of its steps were
    skipped beyond the scale's calibration, or an activation came within 2x of 65504. Other
    precisions: nothing."""
    if precision != "fp16":
        return []
    epochs = [r for r in metrics if isinstance(r, dict) and "epoch" in r and "grad_scale" in r]
    scales = [r["grad_scale"] for r in epochs if _finite_number(r.get("grad_scale"))]
    skipped = sum(r["skipped_steps"] for r in epochs if _finite_number(r.get("skipped_steps")))
    steps = max((r["step"] for r in epochs if _finite_number(r.get("step"))), default=0)
    peaks: dict[str, float] = {}
    for record in monitors:
        layers = record.get("layers") if isinstance(record, dict) else None
        for name, entry in (layers or {}).items():
            value = entry.get("act_absmax") if isinstance(entry, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
                peaks[name] = max(peaks.get(name, 0.0), value)
    reasons: list[str] = []
    evidence: dict[str, Any] = {"fp16_max": FP16_MAX}
    min_scale = min(scales, default=None)
    if min_scale is not None and min_scale < SCALE_FLOOR:
        reasons.append(f"the loss scale fell to {min_scale:.3g} (below 1: the gradients overflow fp16 even unscaled)")
        evidence["min_grad_scale"] = min_scale
    if steps and skipped - CALIBRATION_SKIPS > SKIPPED_FRACTION * steps:
        reasons.append(f"{skipped} of {steps} steps ({skipped / steps:.0%}) were skipped because their gradients "
                       f"overflowed ({CALIBRATION_SKIPS} are expected while the scale calibrates)")
    if steps:
        evidence.update(skipped_steps=skipped, steps=steps)
    near = {name: peak for name, peak in peaks.items() if peak >= FP16_MAX / ACTIVATION_MARGIN}
    worst = max(near, key=lambda name: near[name]) if near else None
    if worst is not None:
        shown = "inf" if math.isinf(near[worst]) else f"{near[worst]:.4g}"
        reasons.append(f"layer {worst}'s outputs reached {shown}, within {ACTIVATION_MARGIN:g}x of fp16's largest "
                       f"value {FP16_MAX:g}" + (f" ({len(near) - 1} more layers too)" if len(near) > 1 else ""))
        evidence["activation_absmax"] = near
    if not reasons:
        return []
    return [Finding(
        "fp16_overflow", "warning",
        "The run is at fp16's ceiling: " + "; ".join(reasons) + ".",
        "Train in bf16 (train.precision: bf16, fp32's range) where the hardware has it, or stay in fp32. In fp16: "
        "lower the learning rate, normalise the layer that overflows (model.norm) or keep it in fp32, and clip "
        "gradients (optimizer.grad_clip).",
        evidence, layer=worst)]


__all__ = ["FP16_MAX", "precision_findings"]
