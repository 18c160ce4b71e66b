"""The loss landscape in words, for the report: the verdict lines first, then every number of
landscape.json rounded to 3 significant digits, long arrays summarised.

``babysit landscape`` writes landscape.json (spectrum, surface, trajectory, interpolation;
see :mod:`babysit.landscape.run`). The report reads the file, not that module (the landscape
command redraws the report, so the report may not import it). Every key is read defensively:
a key that is missing or of the wrong type drops its line, never the page.

Example
-------
>>> landscape_verdict({"interpolation": {"start": "initialisation", "end": "run (best.pt)",
...     "loss_start": 1.3993, "loss_end": 0.88967, "barrier": 0.0, "monotone_decrease": False}})
['Interpolation from initialisation to run (best.pt): loss 1.4 → 0.89, barrier 0 (not monotone).']
>>> landscape_value([10.697520527146667, 7.025427196796194])
'10.7, 7.03'
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# landscape.critical's classes in words (by the Hessian eigenvalues' signs where the gradient is ~0)
CRITICAL_POINTS = {
    "minimum": ": every direction curves up",
    "saddle": ": some directions still go down",
    "maximum": ": every direction curves down",
    "degenerate": ": flat in some directions (eigenvalues near 0)",
    "not_critical": ": the gradient is not near 0, training stopped on a slope",
}
SHOWN_IN_FULL = 6  # a list up to this long is listed; a longer one is summarised
ENDS = 3  # values shown from each end of a summarised list


def sig3(value: Any) -> str:
    """A number to 3 significant digits (integers whole, with thousands separators).

    Example
    -------
    >>> sig3(0.8896764742300417), sig3(1516), sig3(7.288546934176551e-09), sig3(float("nan"))
    ('0.89', '1,516', '7.29e-09', 'nan')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def landscape_value(value: Any) -> str:
    """One value of landscape.json as short text (not escaped): numbers to 3 significant
    digits; a list of up to :data:`SHOWN_IN_FULL` values listed; a longer one as its count,
    range and first and last :data:`ENDS` values; a grid as its shape and range.

    Example
    -------
    >>> landscape_value(list(range(90)))
    '90 values from 0 to 89: 0, 1, 2, …, 87, 88, 89'
    >>> landscape_value([[1.0, 2.5], [3.25, 4.0]])
    '2×2 grid from 1 to 4'
    >>> landscape_value(None), landscape_value("saddle")
    ('', 'saddle')
    """
    if value is None:
        return ""
    if not isinstance(value, list):
        return sig3(value) if _is_number(value) or isinstance(value, bool) else str(value)
    if not value:
        return "[]"
    if any(isinstance(v, list) for v in value):
        try:
            grid = np.asarray(value, dtype=float)
        except (TypeError, ValueError):  # ragged, or not numbers
            return f"{len(value)} lists"
        finite = grid[np.isfinite(grid)]
        shape = "×".join(str(n) for n in grid.shape)
        return f"{shape} grid" + (f" from {sig3(float(finite.min()))} to {sig3(float(finite.max()))}" if finite.size else "")
    if len(value) <= SHOWN_IN_FULL:
        return ", ".join(landscape_value(v) for v in value)
    shown = [landscape_value(v) for v in (*value[:ENDS], *value[-ENDS:])]
    numbers = [float(v) for v in value if _is_number(v) and math.isfinite(v)]
    span = f" from {sig3(min(numbers))} to {sig3(max(numbers))}" if len(numbers) == len(value) else ""
    return f"{len(value)} values{span}: {', '.join(shown[:ENDS])}, …, {', '.join(shown[ENDS:])}"


def _section(landscape: dict[str, Any], name: str) -> dict[str, Any]:
    value = landscape.get(name)
    return value if isinstance(value, dict) else {}


def _numbers(section: dict[str, Any], *keys: str) -> bool:
    return all(_is_number(section.get(k)) for k in keys)


def landscape_verdict(landscape: dict[str, Any]) -> list[str]:
    """The few sentences a reader wants first: where training ended (minimum, saddle, or on a
    slope), the learning rate against the curvature limit, the shape of the surface around the
    end point, the path from initialisation, the trajectory. Empty when none can be said.

    Example
    -------
    >>> landscape_verdict({"spectrum": {"critical_point": "not_critical", "strict": False,
    ...     "gradient_norm": 1.9128, "loss": 0.88967, "lambda_max": 10.6975, "lambda_min": -1.4374}})
    ['End point: not critical (gradient norm 1.91, loss 0.89): the gradient is not near 0, training stopped on a slope. Hessian eigenvalues from -1.44 to 10.7.']
    """
    lines = []
    s = _section(landscape, "spectrum")
    if isinstance(s.get("critical_point"), str):
        kind = s["critical_point"].replace("_", " ") + (" (strict)" if s.get("strict") is True else "")
        numbers = ", ".join(f"{label} {sig3(s[k])}" for k, label in (("gradient_norm", "gradient norm"), ("loss", "loss"))
                            if _is_number(s.get(k)))
        line = f"End point: {kind}" + (f" ({numbers})" if numbers else "") + CRITICAL_POINTS.get(s["critical_point"], "")
        if _numbers(s, "lambda_min", "lambda_max"):
            line += f". Hessian eigenvalues from {sig3(s['lambda_min'])} to {sig3(s['lambda_max'])}"
        lines.append(line + ".")
    rate = s.get("learning_rate")
    if isinstance(rate, dict) and isinstance(rate.get("verdict"), str):
        lines.append(f"Learning rate: {rate['verdict']}.")
    f = _section(landscape, "surface")
    if _numbers(f, "center_loss", "max_loss"):
        where = ("the lowest point of the grid" if f.get("center_is_grid_minimum") is True else
                 f"the grid's lowest is {sig3(f['min_loss'])}" if _is_number(f.get("min_loss")) else "")
        lines.append(f"Surface: loss {sig3(f['center_loss'])} at the end point" + (f" ({where})" if where else "")
                     + f", up to {sig3(f['max_loss'])} at the edge of the grid.")
    i = _section(landscape, "interpolation")
    if _numbers(i, "loss_start", "loss_end", "barrier"):
        shape = " (monotone decrease)" if i.get("monotone_decrease") is True else (
            " (not monotone)" if i.get("monotone_decrease") is False else "")
        lines.append(f"Interpolation from {i.get('start', 'the start')} to {i.get('end', 'the end')}: loss "
                     f"{sig3(i['loss_start'])} → {sig3(i['loss_end'])}, barrier {sig3(i['barrier'])}{shape}.")
    t = _section(landscape, "trajectory")
    ratios = t.get("explained_variance_ratio")
    if isinstance(ratios, list) and len(ratios) >= 2 and all(_is_number(r) for r in ratios[:2]):
        lines.append(f"Trajectory: the first two principal directions hold {ratios[0]:.0%} and {ratios[1]:.0%} "
                     "of the path's variance.")
    return lines


__all__ = ["CRITICAL_POINTS", "ENDS", "SHOWN_IN_FULL", "landscape_value", "landscape_verdict", "sig3"]
