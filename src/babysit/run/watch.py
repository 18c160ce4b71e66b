"""``babysit.watch``: a full babysitter for a training loop you wrote yourself.

``babysit train`` drives the loop; here you do, and babysit watches. Give
``watch(model, optimizer, out="runs/mine")`` each step's loss (``w.step(loss)``) and each
epoch's figures (``w.epoch(train_loss=..., val_loss=..., val_acc=...)``, any scalar names),
and it writes the same run directory as ``babysit train``:

- ``config.yaml``: what babysit knows of the run (``recorded_by: watch``, the network's class
  and size, the optimizer and its settings); not a spec babysit can rerun;
- ``metrics.jsonl``: one line an epoch, with ``step`` and ``lr`` added (``train_loss``, when
  not given, is the mean of the epoch's step losses);
- ``monitors.jsonl``: the sampled per-layer statistics (:mod:`babysit.checks.monitors`);
- ``findings.json``: the monitors' findings, the curve diagnosis (over- and underfitting,
  learning rate too high or too low, not converged: :mod:`babysit.checks.diagnose`) and any
  preflight findings (``w.preflight(loss_fn, (x, y))``), reconciled;
- ``summary.json``, ``checkpoints/initial.pt`` and ``last.pt`` (the weights at the start and
  at the end), ``tb/`` (TensorBoard) and ``report.html``.

Leaving the ``with`` block (or :meth:`RunWatch.close`) diagnoses and draws the report; so does
an exception inside it, before it propagates: what the loop did is kept. ``babysit report``
and ``babysit compare`` work on the directory; the loss landscape needs the network and a data
sample, which only your script has: ``babysit.landscape_run(path, model=net, data=(x, y),
loss_fn=loss_fn)``.

Example
-------
>>> import tempfile, torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
>>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
>>> x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
>>> with watch(net, opt, out=tempfile.mkdtemp() + "/mine", report=False, quiet=True) as w:
...     for epoch in range(3):
...         for i in range(0, 256, 64):
...             loss = nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64])
...             opt.zero_grad(); loss.backward(); opt.step()
...             _ = w.step(loss)
...         _ = w.epoch(val_loss=nn.functional.cross_entropy(net(x), y))
>>> sorted(p.name for p in w.path.iterdir() if p.suffix in (".json", ".jsonl", ".yaml"))
['config.yaml', 'findings.json', 'metrics.jsonl', 'monitors.jsonl', 'summary.json']
>>> w.summary["epochs"], w.summary["steps"]
(3, 12)
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from babysit.checks.diagnose import diagnose
from babysit.checks.findings import (
    Finding,
    findings_markdown,
    own_loop_advice,
    reconcile,
    sort_findings,
    write_findings,
)
from babysit.checks.monitors import monitor_summary
from babysit.checks.preflight import preflight as preflight_checks
from babysit.checks.watch import Watch
from babysit.config import EXPLOSION_FACTOR
from babysit.errors import BabysitError
from babysit.run.runner import write_report
from babysit.rundir import (
    check_new_run_folder,
    is_run,
    json_line,
    next_free,
    remove_orphans,
    run_lock,
    write_json,
    write_text,
)
from babysit.train.checkpoint import save_checkpoint
from babysit.train.device import environment

RECORDED_BY = "recorded_by"  # config.yaml's key naming what wrote a run babysit did not drive

# torch optimizer classes -> babysit's optimizer names (the landscape's step-size verdict reads them)
_OPTIMIZER_NAMES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop", "Adagrad": "adagrad",
                    "LBFGS": "lbfgs"}


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """babysit's name for ``optimizer`` (``momentum`` / ``nesterov`` for SGD with momentum; the
    class name for one babysit does not know) and its first group's lr, momentum, weight decay.

    >>> net = nn.Linear(2, 1)
    >>> optimizer_settings(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    {'name': 'momentum', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 0.0}
    """
    group = optimizer.param_groups[0]
    kind = type(optimizer).__name__
    name = _OPTIMIZER_NAMES.get(kind, kind)
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if name == "sgd" and momentum > 0:
        name = "nesterov" if group.get("nesterov") else "momentum"
    if "betas" in group:
        momentum = float(group["betas"][0])
    lr = group.get("lr", math.nan)
    return {"name": name, "lr": float(lr.item() if isinstance(lr, torch.Tensor) else lr), "momentum": momentum,
            "weight_decay": float(group.get("weight_decay", 0.0) or 0.0)}


def _scalar(name: str, value: Any) -> float:
    """A logged figure as a float: a number, or a tensor / array of one element."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    count = numel() if callable(numel) else numel
    if count == 1 and hasattr(value, "item"):
        return float(value.item())
    raise BabysitError(f"epoch: {name} must be one number (a float, or a tensor of one element), "
                       f"got {type(value).__name__}" + (f" of {count} elements" if isinstance(count, int) else ""))


class RunWatch(Watch):
    """:class:`babysit.checks.watch.Watch` (the live monitors) that also keeps a run directory;
    see :func:`watch`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, out: str | Path | None = None, *,
                 every: int = 10, explosion_factor: float = EXPLOSION_FACTOR, path: str | Path | None = None,
                 chance_loss: float | None = None, epochs: int | None = None, name: str | None = None,
                 task: str | None = None, report: bool = True, quiet: bool = False,
                 recorded_by: str = "watch", about: dict[str, Any] | None = None):
        if out is not None and path is not None:
            raise BabysitError("watch: give out= (a run directory) or path= (a monitors.jsonl file), not both")
        if task not in (None, "classification", "regression"):
            raise BabysitError(f"watch: task must be 'classification' or 'regression', got {task!r}")
        if epochs is not None and epochs < 1:
            raise BabysitError(f"watch: epochs (the planned number) must be >= 1, got {epochs}")
        self.model, self.optimizer = model, optimizer
        self.epochs_planned, self.task, self.report, self.quiet = epochs, task, report, quiet
        self.recorded_by = recorded_by
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._epoch_losses: list[Any] = []
        self._preflight: list[Finding] = []
        self._started = time.perf_counter()
        self._closed = False
        self._locks = contextlib.ExitStack()
        self._metrics = None
        self._tb = None
        directory = None
        if out is not None:
            directory = self._open_directory(Path(out))
            path = directory / "monitors.jsonl"
        super().__init__(model, optimizer, every=every, explosion_factor=explosion_factor, path=path,
                         chance_loss=chance_loss)
        self.path: Path | None = directory  # the run directory (out, or the first free name after it)
        if self.path is not None:
            self.name = name or self.path.name
            self._write_config(recorded_by, about or {})
            save_checkpoint(self.path / "checkpoints" / "initial.pt", {"model": _cpu_state(model)})
            self._metrics = (self.path / "metrics.jsonl").open("a", encoding="utf-8")
        else:
            self.name = name or "watch"

    # ------------------------------------------------------------------ the directory

    def _open_directory(self, out: Path) -> Path:
        """``out``, or ``out-2``, ``out-3``... when ``out`` holds a run already (a new run never
        overwrites an old one); a folder of other files is refused. Held under the run lock
        until :meth:`close`."""
        target = next_free(out, is_run) if is_run(out) else out
        if target != out and not self.quiet:
            print(f"babysit: {out} holds a run already; this one goes to {target}", file=sys.stderr)
        check_new_run_folder(target)
        target.mkdir(parents=True, exist_ok=True)
        self._locks.enter_context(run_lock(target))
        remove_orphans(target)
        (target / "checkpoints").mkdir(exist_ok=True)
        return target

    def _write_config(self, recorded_by: str, about: dict[str, Any]) -> None:
        assert self.path is not None
        parameters = sum(p.numel() for p in self.model.parameters())
        config = {
            "name": self.name,
            RECORDED_BY: recorded_by,
            "model": {"class": type(self.model).__name__, "parameters": parameters},
            "optimizer": optimizer_settings(self.optimizer),
            "train": {"epochs": self.epochs_planned},
            "checks": {"every": self.monitor.every, "explosion_factor": self.monitor.explosion_factor},
            **about,
        }
        header = (f"# recorded by babysit.{recorded_by} from a training loop babysit did not drive: what babysit knows\n"
                  "# of it, not a spec `babysit train` can rerun\n")
        write_text(self.path / "config.yaml", header + yaml.safe_dump(config, sort_keys=False))

    def _tensorboard(self) -> Any:
        if self._tb is None and self.path is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._tb

    # ------------------------------------------------------------------ the loop's figures

    def step(self, loss: torch.Tensor | float) -> bool:
        """Record the loss of the step just taken (call after ``optimizer.step()``); False once
        the loss has exploded or become NaN/inf (see :meth:`babysit.checks.watch.Watch.step`).
        The loss stays on the device until the epoch's end."""
        self._epoch_losses.append(loss.detach() if isinstance(loss, torch.Tensor) else float(loss))
        return super().step(loss)

    def epoch(self, **scalars: Any) -> dict[str, Any]:
        """Log the epoch just finished: any scalars (numbers or one-element tensors), usually
        ``train_loss``, ``val_loss``, ``val_acc``. ``epoch``, ``step`` and ``lr`` are added;
        ``train_loss`` defaults to the mean of the losses given to :meth:`step` this epoch.
        Returns the record (a line of ``metrics.jsonl``)."""
        record: dict[str, Any] = {"epoch": len(self.history) + 1, "step": self.monitor.step,
                                  "lr": optimizer_settings(self.optimizer)["lr"]}
        if "train_loss" not in scalars and self._epoch_losses:
            values = [v if isinstance(v, torch.Tensor) else torch.tensor(v) for v in self._epoch_losses]
            record["train_loss"] = torch.stack([v.float().cpu().reshape(()) for v in values]).mean().item()
        for key, value in scalars.items():
            if key in ("epoch", "step"):
                raise BabysitError(f"epoch: {key} is counted by babysit; log your figures under other names")
            record[key] = _scalar(key, value)
        record["time"] = round(time.perf_counter() - self._started, 3)
        self._epoch_losses = []
        self.history.append(record)
        if self._metrics is not None:
            self._metrics.write(json_line(record) + "\n")
            self._metrics.flush()
            writer = self._tensorboard()
            for key, value in record.items():
                if key not in ("epoch", "step", "time") and math.isfinite(value):
                    writer.add_scalar(key, value, global_step=record["step"])
        return record

    def preflight(self, loss_fn: Any, data: Any, **options: Any) -> list[Finding]:
        """:func:`babysit.preflight` on the watched model (before training), its findings kept
        for the run's findings.json and report."""
        found = own_loop_advice(preflight_checks(self.model, loss_fn, data, **options))
        self.add_findings(found)
        return found

    def add_findings(self, found: list[Finding]) -> None:
        """Findings from elsewhere (a preflight) to report with the run's own."""
        self._preflight += list(found)

    # ------------------------------------------------------------------ the diagnosis

    def _guess_task(self) -> str:
        if self.task is not None:
            return self.task
        if self.monitor.chance_loss is not None or any(k.endswith("_acc") for r in self.history for k in r):
            return "classification"
        return "regression" if self.history else "classification"

    def findings(self) -> list[Finding]:
        """The monitors' findings, the curve diagnosis of the logged epochs (once there are
        any) and the preflight's, reconciled and most severe first, their advice worded for
        your code (:func:`~babysit.checks.findings.own_loop_advice`)."""
        monitored = super().findings()  # sets the monitor's chance loss
        records = self.monitor.records
        initial = records[0].get("loss") if records else None
        summary = {"stopped_early": self.stopped, "diverged": self.stopped,
                   "stop_reason": self.monitor.guard.id if self.monitor.guard is not None else None}
        curves = diagnose(self.history, summary, task=self._guess_task(),
                          initial_loss=initial if isinstance(initial, float) else None,
                          chance_loss=self.monitor.chance_loss, epochs_planned=self.epochs_planned,
                          early_stopping=False,
                          update_ratios=monitor_summary(records)["update_ratio_median"] if records else None)
        # advice in the words of the user's code, not of a spec they do not have
        return own_loop_advice(sort_findings(reconcile([*self._preflight, *monitored, *curves])))

    def close(self) -> None:
        """Remove the hooks; with a run directory, write the findings, summary, weights and
        report (once: a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._epoch_losses and self.history:  # steps after the last epoch() are counted, not logged
            self._epoch_losses = []
        super().close()
        if self.path is None:
            return
        try:
            self._finish()
        finally:
            if self._metrics is not None:
                self._metrics.close()
            if self._tb is not None:
                self._tb.close()
            self._locks.close()

    def _finish(self) -> None:
        assert self.path is not None
        found = self.findings()
        guard = self.monitor.guard
        last = self.history[-1] if self.history else {}
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.summary = {
            "name": self.name,
            **{k: v for k, v in last.items() if k not in ("epoch", "step", "lr", "time")},
            "epochs": len(self.history),
            "steps": self.monitor.step,
            "stopped_early": guard is not None,
            "stop_reason": f"{guard.id}: {guard.message}" if guard is not None else None,
            "diverged": guard is not None,
            "wall_time_s": round(time.perf_counter() - self._started, 3),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "findings": {sev: sum(f.severity == sev for f in found) for sev in ("error", "warning", "info")},
            **environment(device),
        }
        write_findings(self.path / "findings.json", found)
        write_json(self.path / "summary.json", self.summary)
        save_checkpoint(self.path / "checkpoints" / "last.pt", {"model": _cpu_state(self.model)})
        if self._tb is not None or self.history:
            self._tensorboard().add_text("findings", findings_markdown(found), global_step=self.monitor.step)
        if self.report:
            write_report(self.path)
        if not self.quiet:
            worst = found[0].id if found and found[0].severity != "info" else "healthy"
            page = f"; report: {self.path / 'report.html'}" if (self.path / "report.html").exists() else ""
            print(f"babysit.{self.recorded_by}: {self.path} ({len(self.history)} epochs, {self.monitor.step} steps): {worst}{page}",
                  file=sys.stderr)

    def __enter__(self) -> RunWatch:
        return self


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, out: str | Path | None = None, *, every: int = 10,
          explosion_factor: float = EXPLOSION_FACTOR, path: str | Path | None = None,
          chance_loss: float | None = None, epochs: int | None = None, name: str | None = None,
          task: str | None = None, report: bool = True, quiet: bool = False) -> RunWatch:
    """Watch a training loop of your own: a context manager whose ``.step(loss)`` samples the
    monitors, whose ``.epoch(**scalars)`` logs the learning curves and whose ``.findings()``
    diagnoses both. With ``out`` it writes a run directory (leaving the block finishes it).

    Parameters
    ----------
    model, optimizer : what your loop trains.
    out : the run directory to write (``runs/mine``); when it holds a run already, the next
        free name (``runs/mine-2``). None: nothing is written (``path`` aside).
    every : sample per-layer statistics every N optimizer steps (the first step always).
    explosion_factor : ``.step`` returns False once the loss exceeds this multiple of the first.
    path : without ``out``, append each monitor sample to this JSON-lines file.
    chance_loss : the loss of a guess that ignores the inputs (the scale of the curve
        diagnosis, and ``loss_at_chance``); default: ln C for a model ending in a Linear of C
        outputs whose first loss is near ln C, else the first sampled loss is the scale.
    epochs : the number of epochs planned (``not_converged`` then knows the run used them all).
    name : the run's name (default the directory's).
    task : ``classification`` or ``regression`` (default: classification when an accuracy is
        logged or the chance loss is known).
    report : draw report.html when the run is finished.
    quiet : print nothing (by default, one line at the end names the directory and the worst finding).
    """
    return RunWatch(model, optimizer, out, every=every, explosion_factor=explosion_factor, path=path,
                    chance_loss=chance_loss, epochs=epochs, name=name, task=task, report=report, quiet=quiet)


__all__ = ["RECORDED_BY", "RunWatch", "optimizer_settings", "watch"]
