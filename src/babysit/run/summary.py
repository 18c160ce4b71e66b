"""How ``babysit train`` ends in the terminal: the results table and one line on how the run went."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from babysit.families import family_of
from babysit.run.runner import RunResult
from babysit.train.ensemble import snapshot_line


def run_line(s: dict[str, Any]) -> str:
    """Epochs (and the best), steps, time, device, and how the run ended, in one line (and the
    snapshot ensemble against its last snapshot on a second, when the run kept snapshots).

    Example
    -------
    >>> run_line({"epochs": 3, "best_epoch": 2, "steps": 30, "wall_time_s": 1.25, "device": "cpu"})
    '3 epochs (best 2), 30 steps in 1.2 s on cpu'
    """
    best = f" (best {s['best_epoch']})" if s.get("best_epoch") and s["best_epoch"] != s["epochs"] else ""
    line = f"{s['epochs']} epochs{best}, {s['steps']} steps in {s['wall_time_s']:.1f} s on {s['device']}"
    if s.get("diverged"):
        line += "; diverged"
    elif s.get("stop_reason"):
        line += f"; stopped: {s['stop_reason']}"
    if s.get("snapshot_ensemble"):
        line += "\n" + snapshot_line(s["snapshot_ensemble"])
    return line


def summary_table(result: RunResult) -> Table:
    """The end-of-run metrics as a compact rich table: loss (and accuracy) per split, or the
    figures the run's family names instead (:func:`run_line` says how long it ran and how it ended)."""
    s = result.summary
    table = Table(title=f"{s.get('name', result.path.name)}: results", title_justify="left")
    own = family_of(result.spec).result_keys if result.spec is not None else ()
    if own:  # e.g. a GAN: its last epoch's adversarial figures
        table.add_column("last epoch")
        table.add_column("value", justify="right")
        for key in own:
            if key in s:
                table.add_row(key, f"{s[key]:.4f}")
        return table
    classification = any(f"{split}_acc" in s for split in ("train", "val", "test"))
    table.add_column("split")
    table.add_column("loss", justify="right")
    if classification:
        table.add_column("accuracy", justify="right")
    for split in ("train", "val", "test"):
        if f"{split}_loss" in s:
            row = [split, f"{s[f'{split}_loss']:.4f}"]
            if classification:
                row.append(f"{s[f'{split}_acc']:.2%}" if f"{split}_acc" in s else "")
            table.add_row(*row)
    return table


__all__ = ["run_line", "summary_table"]
