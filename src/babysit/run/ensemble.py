"""``babysit ensemble RUN RUN ...``: the ensemble of trained runs.

:func:`ensemble_runs` rebuilds each run's data exactly as it trained (its own seed and
preprocessing, :func:`babysit.run.load.load_run`), loads its best weights, checks that every
member is scored on the same test examples and scores the members and their ensemble (how
members combine: :mod:`babysit.train.ensemble`). ``ensemble.json`` and ``ensemble.png``
keep the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from rich.table import Table

from babysit.checks.answers import TemperatureScaled, saved_temperature
from babysit.config import Experiment
from babysit.errors import BabysitError
from babysit.report.figures import png_bytes
from babysit.run.load import load_run
from babysit.rundir import RUNS, next_free, write_bytes, write_json
from babysit.train.device import resolve_device
from babysit.train.ensemble import combination, evaluate_ensemble


def _data_difference(a: Experiment, b: Experiment) -> str | None:
    """The first data key (batch_size aside) on which two specs differ, as 'key: A there, B here'."""
    da, db = a.data.model_dump(mode="json"), b.data.model_dump(mode="json")
    for key in da:
        if key != "batch_size" and da[key] != db[key]:
            return f"data.{key}: {da[key]!r} there, {db[key]!r} here"
    return None


def ensemble_runs(run_dirs: Sequence[str | Path], device: torch.device | str | None = None, *,
                  calibrated: bool = False) -> dict[str, Any]:
    """Score the ensemble of trained runs and each of them on the test (and validation) split.

    Every run must have the same data (keys of ``data:`` other than ``batch_size``, so the
    same ``data.split_seed``: the same train, validation and test examples) and loss. Runs
    may differ in seed (the usual ensemble) and in network: each member sees the examples
    through its own preprocessing. Returns what ensemble.json holds.

    ``calibrated``: each member's logits are divided by the temperature fitted on its own
    validation split (its calibration.json, :mod:`babysit.checks.answers`) before they are
    combined, so the ensemble averages calibrated probabilities; a member without one is
    refused. Off by default: averaging already softens the members' probabilities, and
    calibrated members can make an underconfident ensemble (Rahaman & Thiery 2021, arXiv
    2007.08792); compare the two losses.

    Example
    -------
    >>> # result = ensemble_runs(["runs/mnist1d-mlp", "runs/mnist1d-mlp-2"])
    >>> # result["ensemble"]["test_acc"], result["best_member"]["test_acc"]
    """
    if not run_dirs:
        raise BabysitError("ensemble: name at least one run directory")
    device = resolve_device("auto") if device is None else torch.device(device)
    seen: set[Path] = set()
    for run_dir in run_dirs:
        resolved = Path(run_dir).resolve()
        if resolved in seen:
            raise BabysitError(f"{run_dir}: given twice; each run counts once in an ensemble")
        seen.add(resolved)
    members = [load_run(run_dirs[0], device)]
    reference = members[0]
    for run_dir in run_dirs[1:]:
        member = load_run(run_dir, device)
        difference = _data_difference(reference.spec, member.spec)
        if difference is not None:
            raise BabysitError(f"{member.path}: data differs from {reference.path} ({difference}); "
                               "an ensemble needs members trained on the same data")
        if member.spec.loss != reference.spec.loss:
            raise BabysitError(f"{member.path}: loss {member.spec.loss!r} differs from {reference.path}'s "
                               f"{reference.spec.loss!r}; members must predict the same kind of output")
        if member.splits.task != reference.splits.task or member.splits.num_classes != reference.splits.num_classes:
            raise BabysitError(f"{member.path}: task differs from {reference.path}'s")
        members.append(member)
    temperatures = [saved_temperature(m.path) for m in members] if calibrated else None
    if temperatures is not None:
        for member, temperature in zip(members, temperatures, strict=True):
            member.model = TemperatureScaled(member.model, temperature)

    # the same data spec (split_seed included) carves the same splits, whatever the members' seeds
    result: dict[str, Any] = {
        "runs": [str(m.path) for m in members],
        "loss": reference.spec.loss,
        "task": reference.splits.task,
        "combined": combination(reference.spec.loss, reference.splits.task),
        "ensemble": {},
        "members": [{"run": str(m.path), "name": m.spec.run_name, "seed": m.spec.seed, "weights": m.checkpoint}
                    for m in members],
        "calibrated": calibrated,
        "device": str(device),
    }
    for name in ("val", "test"):
        splits = [getattr(m.splits, name) for m in members]
        if any(s is None or not len(s) for s in splits):
            continue
        scores = evaluate_ensemble([m.model for m in members], reference.spec.loss, splits,
                                   task=reference.splits.task, num_classes=reference.splits.num_classes)
        for key in ("loss", "acc"):
            if key in scores:
                result["ensemble"][f"{name}_{key}"] = scores[key]
                for row, member_scores in zip(result["members"], scores["members"], strict=True):
                    row[f"{name}_{key}"] = member_scores[key]
    if "test_loss" not in result["ensemble"]:
        raise BabysitError(f"{reference.path}: its data has no test split (data.test_fraction: 0); nothing to score")
    key = "test_acc" if result["task"] == "classification" else "test_loss"
    pick = max if key == "test_acc" else min
    best = pick(result["members"], key=lambda row: row[key])
    result["best_member"] = {"run": best["run"], "by": key, **{k: v for k, v in best.items() if k.startswith(("val_", "test_"))}}
    result["notes"] = []  # kept in ensemble.json: nothing is left unscored since members share their splits
    if temperatures is not None:
        for row, temperature in zip(result["members"], temperatures, strict=True):
            row["temperature"] = temperature
        result["notes"].append("members' logits divided by their fitted temperatures ("
                               + ", ".join(f"{t:.3g}" for t in temperatures) + ") before averaging")
    return result


def ensemble_directory(out: str | Path | None) -> Path:
    """Where ``babysit ensemble`` writes: ``out``, else ``runs/ensemble`` (``-2``, ``-3``... when
    that holds an earlier result, as run directories are named).

    Example
    -------
    >>> str(ensemble_directory("runs/mine"))
    'runs/mine'
    """
    if out is not None:
        return Path(out)
    return next_free(RUNS / "ensemble", taken=lambda p: (p / "ensemble.json").exists())


def _label(run: str, runs: Sequence[str]) -> str:
    """A short name for a member: its directory name, or the whole path when names repeat."""
    name = Path(run).name
    return name if sum(Path(r).name == name for r in runs) == 1 else run


def ensemble_figure(result: dict[str, Any]) -> Any:
    """A bar chart of each member's and the ensemble's test accuracy (test loss for regression).

    Example
    -------
    >>> result = {"task": "classification", "runs": ["a", "b"], "members": [{"run": "a", "test_acc": 0.6},
    ...           {"run": "b", "test_acc": 0.62}], "ensemble": {"test_acc": 0.66}}
    >>> len(ensemble_figure(result).axes[0].patches)
    3
    """
    key = "test_acc" if result["task"] == "classification" else "test_loss"
    labels = [_label(row["run"], result["runs"]) for row in result["members"]] + ["ensemble"]
    values = [row[key] for row in result["members"]] + [result["ensemble"][key]]
    scale = 100.0 if key == "test_acc" else 1.0
    values = [v * scale for v in values]
    width, height = max(4.0, 0.7 * len(values) + 1.5), 3.2
    rotate = len(values) > 5
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=(0.75 if rotate else 0.45) / height,
                        top=1 - 0.35 / height)
    ax = fig.add_subplot()
    colours = ["tab:gray"] * (len(values) - 1) + ["tab:blue"]
    bars = ax.bar(range(len(values)), values, color=colours)
    best = max(values[:-1]) if key == "test_acc" else min(values[:-1])
    ax.axhline(best, color="tab:orange", linestyle="--", linewidth=1, label="best member")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.1f}" if key == "test_acc" else f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=8)
    ax.set_ylim(0.0, max(values) * 1.2)  # from zero: bar lengths compare honestly; the labels give the numbers
    ax.set_ylabel("test accuracy (%)" if key == "test_acc" else "test loss")
    ax.set_title(f"ensemble of {len(values) - 1}: {result.get('combined', '')}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def write_ensemble(result: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """Write ``ensemble.json`` and ``ensemble.png`` into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = write_bytes(directory / "ensemble.png", png_bytes(ensemble_figure(result), dpi=100))
    path = directory / "ensemble.json"
    write_json(path, {**result, "figure": png.name})
    return path, png


def ensemble_table(result: dict[str, Any]) -> Any:
    """The members and the ensemble as a rich table: validation and test loss and accuracy."""
    columns = [c for c in ("val_loss", "val_acc", "test_loss", "test_acc") if c in result["ensemble"]]
    table = Table(title=f"ensemble of {len(result['members'])}", caption=result["combined"])
    table.add_column("member")
    table.add_column("seed", justify="right")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")

    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        if value is None:
            return "-"
        return f"{value:.2%}" if column.endswith("acc") else f"{value:.4f}"

    for row in result["members"]:
        table.add_row(_label(row["run"], result["runs"]), str(row["seed"]), *(cell(row, c) for c in columns))
    table.add_row("[bold]ensemble[/bold]", "", *(f"[bold]{cell(result['ensemble'], c)}[/bold]" for c in columns))
    return table


def ensemble_lines(result: dict[str, Any]) -> list[str]:
    """The lines ``babysit ensemble`` prints under the table."""
    key = result["best_member"]["by"]
    what = "accuracy" if key == "test_acc" else "loss"
    fmt = "{:.2%}" if key == "test_acc" else "{:.4f}"
    lines = [f"test {what}: ensemble {fmt.format(result['ensemble'][key])}, best member "
             f"{fmt.format(result['best_member'][key])} ({_label(result['best_member']['run'], result['runs'])})"]
    return lines + [f"note: {note}" for note in result.get("notes", [])]


__all__ = ["ensemble_directory", "ensemble_figure", "ensemble_lines", "ensemble_runs", "ensemble_table",
           "write_ensemble"]
