"""What every study shares: its result, a training run that records its own curve, and the
study directory (results.json, table.csv, figures/*.png, report.html).

A study trains many small networks that differ in one thing (the activation, the init, the
optimizer...) and compares them. Each training run here is babysit's own loop
(:class:`babysit.train.Trainer`) with one callback, :class:`Recorder`, that measures the
whole training split (loss) and the validation split (accuracy) every ``every`` steps, with
the clock stopped while it measures, so "wall time" is training time only. A run stops when
it reaches a target accuracy or loss, when it diverges (a non-finite loss, or one above
:data:`babysit.config.EXPLOSION_FACTOR` times the first: the explosion guard's rule), or when its step budget is spent.

Example
-------
>>> import torch
>>> from torch import nn
>>> from babysit.data import Split
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> x = torch.randn(200, 2); y = (x[:, 0] > 0).long()
>>> model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
>>> curve = train_recorded(model, torch.optim.SGD(model.parameters(), lr=0.5), Split(x, y), Split(x, y),
...                        batch_size=50, max_steps=200, every=10, target_acc=0.95)
>>> curve.reached_step is not None and curve.reached_step <= 200
True
"""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from babysit.config import EXPLOSION_FACTOR
from babysit.data import Split
from babysit.data.batching import Batches
from babysit.optim import losses
from babysit.report.figures import png_bytes
from babysit.report.page import data_uri, escape, page, table
from babysit.rundir import next_free, write_bytes, write_json, write_text
from babysit.train.device import cpu_threads
from babysit.train.loop import Callback, Trainer, evaluate

Progress = Callable[[str], None]


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch: the same seed builds the same network and batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


threads = cpu_threads  # torch's intra-op threads for a block (the run path's own helper)


# --------------------------------------------------------------------------- a recorded run


@dataclass
class Curve:
    """One training run's measurements.

    ``points`` are dicts with ``step``, ``epoch`` (fractional), ``time`` (training seconds,
    measuring excluded), ``loss`` (mean over the whole training split, eval mode) and
    ``val_acc`` (and ``test_acc`` when a test split was given). ``reached_step`` / ``reached_time`` / ``reached_epoch``: where the target was
    first met (None if never). ``diverged``: the loss blew up or turned non-finite.
    """

    points: list[dict[str, float]] = field(default_factory=list)
    reached_step: int | None = None
    reached_time: float | None = None
    reached_epoch: float | None = None
    diverged: bool = False
    steps: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.points[-1]["loss"] if self.points else math.nan

    @property
    def final_acc(self) -> float:
        return self.points[-1]["val_acc"] if self.points else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"points": self.points, "reached_step": self.reached_step, "reached_time": self.reached_time,
                "reached_epoch": self.reached_epoch, "diverged": self.diverged, "steps": self.steps,
                "seconds": self.seconds}


class Recorder(Callback):
    """Measures the run every ``every`` optimizer steps (and at the start) with the clock
    stopped; stops it at the target, on divergence or at ``max_steps``.

    ``monitor`` (a :class:`babysit.checks.monitors.Monitor`) is given each step's loss.
    """

    def __init__(self, curve: Curve, train: Split, val: Split, loss_fn: nn.Module, *, every: int,
                 steps_per_epoch: int, max_steps: int, target_acc: float | None, target_loss: float | None,
                 stop_at_target: bool = True, stop_loss: float | None = None, monitor: Any = None,
                 test: Split | None = None):
        self.curve, self.train, self.val, self.test, self.loss_fn = curve, train, val, test, loss_fn
        self.every, self.steps_per_epoch, self.max_steps = every, steps_per_epoch, max_steps
        self.target_acc, self.target_loss = target_acc, target_loss
        self.stop_at_target, self.stop_loss = stop_at_target, stop_loss
        self.monitor = monitor
        self.predict = lambda out: losses.predict(out, "cross_entropy")
        self.training_time = 0.0
        self._resumed = 0.0
        self._first_loss: float | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self._measure(trainer, 0)
        self._resumed = time.perf_counter()

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.monitor is not None:
            self.monitor.observe_loss(loss)
        step = trainer.state.step
        if step % self.every == 0 or step >= self.max_steps:
            self.training_time += time.perf_counter() - self._resumed
            self._measure(trainer, step)
            self._resumed = time.perf_counter()

    def on_fit_end(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if not self.curve.points or self.curve.points[-1]["step"] != step:
            self.training_time += time.perf_counter() - self._resumed
            self._measure(trainer, step)
        self.curve.steps, self.curve.seconds = step, self.training_time

    def _measure(self, trainer: Trainer, step: int) -> None:
        train = evaluate(trainer.model, self.loss_fn, self.train)
        val = evaluate(trainer.model, self.loss_fn, self.val, self.predict)
        point = {"step": step, "epoch": step / self.steps_per_epoch, "time": self.training_time,
                 "loss": train["loss"], "val_acc": val["acc"]}
        if self.test is not None:
            point["test_acc"] = evaluate(trainer.model, self.loss_fn, self.test, self.predict)["acc"]
        curve = self.curve
        curve.points.append(point)
        if self._first_loss is None:
            self._first_loss = point["loss"]
        if not math.isfinite(point["loss"]) or point["loss"] > EXPLOSION_FACTOR * self._first_loss:
            curve.diverged = True
            trainer.state.stop = True
            return
        reached = ((self.target_acc is None or point["val_acc"] >= self.target_acc)
                   and (self.target_loss is None or point["loss"] <= self.target_loss)
                   and (self.target_acc is not None or self.target_loss is not None))
        if reached and curve.reached_step is None:
            curve.reached_step, curve.reached_time, curve.reached_epoch = step, point["time"], point["epoch"]
            trainer.state.stop = trainer.state.stop or self.stop_at_target
        if step >= self.max_steps or (self.stop_loss is not None and point["loss"] <= self.stop_loss):
            trainer.state.stop = True


def train_recorded(model: nn.Module, optimizer: torch.optim.Optimizer, train: Split, val: Split, *,
                   batch_size: int | str, max_steps: int, every: int, target_acc: float | None = None,
                   target_loss: float | None = None, stop_at_target: bool = True, stop_loss: float | None = None,
                   seed: int = 0, monitor: Any = None, test: Split | None = None) -> Curve:
    """Train ``model`` (cross-entropy) on ``train`` until the target (unless ``stop_at_target``
    is False: then only the first step that met it is noted), divergence, a training loss of
    ``stop_loss`` or below (converged), or ``max_steps``. With ``test``, each measurement
    also scores the test split (``test_acc``).

    The batches are drawn from a generator seeded with ``seed``; measuring happens every
    ``every`` steps. Returns the :class:`Curve`. L-BFGS and Newton are driven through
    closures by the Trainer, as in ``babysit train``.
    """
    loss_fn = losses.build_loss("cross_entropy", "classification", int(train.y.max()) + 1)
    batches = Batches(train.x, train.y, batch_size, torch.Generator().manual_seed(seed))
    curve = Curve()
    recorder = Recorder(curve, train, val, loss_fn, every=every, steps_per_epoch=len(batches), max_steps=max_steps,
                        target_acc=target_acc, target_loss=target_loss, stop_at_target=stop_at_target,
                        stop_loss=stop_loss, monitor=monitor, test=test)
    trainer = Trainer(model, loss_fn, optimizer, callbacks=[recorder])
    epochs = math.ceil(max_steps / len(batches))
    trainer.fit(batches, epochs)
    return curve


# --------------------------------------------------------------------------- the result


@dataclass
class StudyResult:
    """What a study found.

    ``columns`` are (key, header) pairs of ``rows`` for the table; ``conclusion`` the plain
    sentences computed from the numbers; ``figures`` matplotlib figures by file stem;
    ``data`` the raw series (curves, per-layer statistics) for results.json; ``checks``
    named booleans, the claim's direction as the numbers show it (the tests assert them).
    """

    name: str
    title: str
    claim: str
    setup: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    conclusion: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    quick: bool = False
    seconds: float = 0.0
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.name, "title": self.title, "claim": self.claim, "setup": self.setup,
                "quick": self.quick, "seconds": round(self.seconds, 3), "columns": [k for k, _ in self.columns],
                "rows": self.rows, "conclusion": self.conclusion, "checks": self.checks, "data": self.data,
                "torch": torch.__version__}


PERCENT_KEYS = ("acc", "fraction", "saturated_or_dead")  # table keys holding a share: shown as %


def cell(value: Any, key: str = "") -> str:
    """A table cell: shares (keys with 'acc' or 'fraction') as percentages, integers with
    thousands separators, other floats to 3 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if any(part in key for part in PERCENT_KEYS):
            return f"{value:.1%}"
        return f"{value:.3g}"
    return str(value)


def study_directory(name: str, out: str | Path | None) -> Path:
    """``out``, or ``runs/study-<name>`` (``-2``, ``-3``... when that exists)."""
    if out is not None:
        return Path(out)
    return next_free(Path("runs") / f"study-{name}")


def write_study(result: StudyResult, path: Path) -> Path:
    """results.json, table.csv, figures/*.png and report.html in ``path``; returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "figures").mkdir(exist_ok=True)
    pngs = {}
    for stem, fig in result.figures.items():
        pngs[stem] = png_bytes(fig)
        write_bytes(path / "figures" / f"{stem}.png", pngs[stem])
    write_json(path / "results.json", result.to_dict(), indent=1)
    with (path / "table.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([header for _, header in result.columns])
        for row in result.rows:
            writer.writerow(["" if row.get(key) is None else row.get(key) for key, _ in result.columns])
    write_text(path / "report.html", study_page(result, pngs))
    result.path = path
    return path


def study_page(result: StudyResult, pngs: dict[str, bytes]) -> str:
    """The self-contained HTML page of a study: claim, conclusion, table, figures (embedded PNG)."""
    rows = [[escape(cell(row.get(key), key)) for key, _ in result.columns] for row in result.rows]
    figures = "".join(f'<figure><img src="{data_uri(png)}" alt="{escape(stem)}">'
                      f'<figcaption>{escape(stem.replace("_", " "))}</figcaption></figure>' for stem, png in pngs.items())
    conclusion = "".join(f"<li>{escape(line)}</li>" for line in result.conclusion)
    body = (f"<h1>{escape(result.title)}</h1>\n<p class=\"muted\">babysit study {escape(result.name)}"
            f"{' --quick' if result.quick else ''}; {result.seconds:.1f} s</p>\n"
            f"<h2>The claim</h2>\n<p>{escape(result.claim)}</p>\n"
            f"<h2>Conclusion</h2>\n<ul>{conclusion}</ul>\n"
            f"<h2>Results</h2>\n{table([h for _, h in result.columns], rows)}\n"
            f"<p class=\"muted\">{escape(result.setup)}</p>\n"
            f"<h2>Figures</h2>\n<div class=\"grid\">{figures}</div>\n")
    return page(f"babysit study: {result.name}", body)


class FittedTable:
    """A study's table as a rich renderable that never cuts or wraps a cell: only headers
    wrap, at spaces. Each column is at least as wide as its longest cell and its header's
    longest word; the width left over goes to the columns whose headers then fit on one line,
    the nearest first. (rich's own layout shrinks the widest columns evenly, below their
    minimum widths, and crops what no longer fits: an "optimizer" column read "opti…".)
    Its measured minimum is that narrowest layout, so a console as wide as it shows it whole.
    """

    def __init__(self, title: str, headers: list[str], cells: list[list[str]], left: list[bool]):
        self.title, self.headers, self.cells, self.left = title, headers, cells, left
        self.narrowest = [max([len(word) for word in header.split()] + [len(row[i]) for row in cells], default=1)
                          for i, header in enumerate(headers)]
        self.widest = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]

    def _table(self, widths: list[int]) -> Any:
        from rich import box
        from rich.table import Table

        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for header, width, left in zip(self.headers, widths, self.left, strict=True):
            table.add_column(header, justify="left" if left else "right", width=width)
        for row in self.cells:
            table.add_row(*row)
        return table

    def _padding(self, console: Any, options: Any) -> int:
        """The columns' padding and separators, as rich lays this table out."""
        from rich.measure import Measurement

        whole = Measurement.get(console, options.update_width(10**6), self._table(self.narrowest)).maximum
        return whole - sum(self.narrowest)

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        padding = self._padding(console, options)
        return Measurement(sum(self.narrowest) + padding, sum(self.widest) + padding)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        room = options.max_width - self._padding(console, options) - sum(self.narrowest)
        widths = list(self.narrowest)
        for i in sorted(range(len(widths)), key=lambda i: self.widest[i] - self.narrowest[i]):
            grow = self.widest[i] - widths[i]
            if grow <= room:  # the whole header on one line, or leave it wrapped
                widths[i], room = self.widest[i], room - grow
        yield self._table(widths)


def rich_table(result: StudyResult) -> FittedTable:
    """The study's table for the terminal (see :class:`FittedTable`): every cell whole."""
    cells = [[cell(row.get(key), key) for key, _ in result.columns] for row in result.rows]
    left = [all(isinstance(row.get(key), str) for row in result.rows) for key, _ in result.columns]
    return FittedTable(result.title, [header for _, header in result.columns], cells, left)


def steps_words(step: int | None, budget: int) -> str:
    """'340 steps', or 'not within 2,000 steps'."""
    return f"{step:,} steps" if step is not None else f"not within {budget:,} steps"
