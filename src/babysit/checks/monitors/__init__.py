"""Live monitors: per-layer statistics sampled while a network trains, and the rules that
read them (CS231n's "babysitting the learning process").

- :mod:`~babysit.checks.monitors.sampler`: :class:`Monitor` (module hooks, sampled every
  ``every`` steps, one record per sample, the explosion guard) and :func:`monitor_line`,
  a record as a line of ``monitors.jsonl``;
- :mod:`~babysit.checks.monitors.rules`: :func:`monitor_findings` and
  :func:`monitor_summary` over those records, with their thresholds.
"""

from babysit.checks.monitors.rules import (
    COLLAPSE_RATIO,
    DEAD_FRACTION,
    EXPLODING_RATIO,
    PERSIST_FRACTION,
    SATURATED_FRACTION,
    SATURATION_LEVEL,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    VANISHING_RATIO,
    monitor_findings,
    monitor_summary,
)
from babysit.checks.monitors.sampler import Monitor, monitor_line, monitored_layers

__all__ = ["COLLAPSE_RATIO", "DEAD_FRACTION", "EXPLODING_RATIO", "PERSIST_FRACTION", "SATURATED_FRACTION",
           "SATURATION_LEVEL", "UPDATE_RATIO_HIGH", "UPDATE_RATIO_LOW", "VANISHING_RATIO", "Monitor",
           "monitor_findings", "monitor_line", "monitor_summary", "monitored_layers"]
