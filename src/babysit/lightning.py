"""``babysit.lightning``: babysit inside a Lightning ``Trainer``.

``Trainer(callbacks=[Babysitter()])`` babysits a LightningModule's fit the way ``babysit train``
babysits its own, through Lightning's public :class:`~pytorch_lightning.Callback` hooks:

- **preflight** (CS231n's checks before learning, :mod:`babysit.checks.preflight`) on the first
  training batch, before the first step, with the module's own ``training_step`` loss:

  - the checks of the inputs and the forward pass (``inputs_not_normalized``,
    ``symmetric_init``, ``batch_mixing``, ``initial_loss_off``) run on the module's
    ``forward`` with the batch's ``x``, when the batch is an ``(x, y)`` pair; their loss is
    ``training_step`` *replayed* on given outputs (a copy of the module whose ``forward``
    returns them), used only when it reproduces ``training_step``'s own loss, and the
    initial-loss check runs only when that loss is recognisably cross-entropy, BCE or MSE;
  - the checks of the loss (``gradient_check_failed``, ``cannot_overfit_tiny_subset``) run on
    :class:`TrainingStepLoss`, ``training_step`` as a network of the example indices, so any
    batch layout (tuples, dicts) and any loss the module computes is checked as it trains;
  - every check works on copies (the module, its mode and the random number generators are
    left as they were); one that cannot apply to the module is skipped (the reason is kept in
    config.yaml under ``preflight_skipped``) and never stops the fit;

- **monitors** (:mod:`babysit.checks.monitors`) sampled every ``every`` optimizer steps with
  the ``training_step`` loss, through :class:`babysit.run.watch.RunWatch`; an exploding or
  non-finite loss stops the fit (``trainer.should_stop``);
- **the Trainer's loggers** get the sampled per-layer update/weight ratios, dead and saturated
  fractions (``babysit/<stat>/<layer>``, once an epoch), the count of findings by severity, and
  the findings as text where the logger has a text tab (TensorBoard's ``add_text``); no logger,
  nothing logged;
- **the curve diagnosis** (:mod:`babysit.checks.diagnose`) of each train epoch's
  ``trainer.callback_metrics`` (``train_loss``, ``val_loss``, ``val_acc``, ...), and at the end
  of the fit (or when it fails: what it did is kept) the run directory with findings.json,
  summary.json, monitors, metrics, checkpoints and report.html; ``babysit report`` and
  ``babysit compare`` read it.

Names of logged metrics are normalised for the diagnosis: ``_epoch`` suffixes dropped, ``_step``
metrics skipped, ``/`` read as ``_`` and ``valid_`` / ``validation_`` as ``val_``,
``_accuracy`` as ``_acc`` (:func:`epoch_scalars`). Validation metrics (``val_*``) count only in
epochs whose validation ran (Lightning keeps the last values in between).

The callback derives from ``pytorch_lightning.Callback`` and, where the unified ``lightning``
package is installed too, from ``lightning.pytorch.Callback`` as well, so the Trainer of either
accepts it. It acts on the global rank 0 only (its replica stands for the others under DDP).

Example
-------
>>> import tempfile, torch
>>> import pytorch_lightning as pl
>>> from torch import nn
>>> class Net(pl.LightningModule):
...     def __init__(self):
...         super().__init__()
...         self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
...     def forward(self, x):
...         return self.net(x)
...     def training_step(self, batch, batch_idx):
...         x, y = batch
...         loss = nn.functional.cross_entropy(self(x), y)
...         self.log("train_loss", loss, on_step=False, on_epoch=True)
...         return loss
...     def configure_optimizers(self):
...         return torch.optim.Adam(self.parameters(), lr=1e-3)
>>> _ = torch.manual_seed(0)
>>> x = torch.randn(256, 8); y = x[:, :3].argmax(1)
>>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
>>> sitter = Babysitter(out=tempfile.mkdtemp() + "/run", report=False, quiet=True)
>>> trainer = pl.Trainer(max_epochs=2, callbacks=[sitter], logger=False, enable_checkpointing=False,
...                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
>>> trainer.fit(Net(), loader)
>>> sorted(p.name for p in sitter.path.iterdir() if p.suffix in (".json", ".jsonl", ".yaml"))
['config.yaml', 'findings.json', 'metrics.jsonl', 'monitors.jsonl', 'summary.json']
>>> sitter.summary["epochs"], sitter.summary["steps"]
(2, 8)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babysit.checks.findings import Finding, findings_markdown
from babysit.checks.preflight import preflight as preflight_checks
from babysit.config import EXPLOSION_FACTOR
from babysit.run.load import global_rng_kept
from babysit.run.watch import RunWatch


def _callback_bases() -> tuple[type, ...]:
    """Lightning's Callback class of each installed package (``pytorch_lightning``, ``lightning``)."""
    bases: list[type] = []
    try:
        import pytorch_lightning

        bases.append(pytorch_lightning.Callback)
    except ImportError:
        pass
    try:
        import lightning.pytorch

        bases.append(lightning.pytorch.Callback)
    except ImportError:
        pass
    if not bases:
        raise ImportError("babysit.lightning needs PyTorch Lightning: pip install 'babysit[lightning]' "
                          "(or pytorch-lightning)")
    return tuple(bases)


_CALLBACK_BASES = _callback_bases()

# the checks of the inputs and the forward pass, on the module's forward with the batch's x
FORWARD_CHECKS = ("inputs_not_normalized", "symmetric_init", "batch_mixing", "initial_loss_off")
# the checks of the loss, on training_step itself (TrainingStepLoss)
STEP_CHECKS = ("gradient_check_failed", "cannot_overfit_tiny_subset")
# a replayed training_step loss must match the real one to this relative tolerance (float32
# roundoff of the same computation: ~1e-7; a different loss differs by far more)
REPLAY_TOLERANCE = 1e-4
# monitor statistics sent to the Trainer's loggers, per layer (the report has the rest)
LOGGED_STATS = ("update_ratio", "dead_fraction", "saturated_fraction")


# --------------------------------------------------------------------------- batches


def _map_leaves(batch: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """``batch`` with ``fn`` applied to every leaf of type ``kind`` in it (tuples, namedtuples,
    lists and dicts, nested); other leaves stay as they are."""
    if isinstance(batch, kind):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: _map_leaves(v, kind, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_map_leaves(v, kind, fn) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_leaves(v, kind, fn) for v in batch)
    return batch


def _tensors(batch: Any) -> list[Tensor]:
    found: list[Tensor] = []
    _map_leaves(batch, Tensor, found.append)
    return found


def _examples(batch: Any) -> int:
    """The number of examples in ``batch``: the first dimension its tensors share (0 if none)."""
    sizes = {t.shape[0] for t in _tensors(batch) if t.dim() > 0}
    return sizes.pop() if len(sizes) == 1 else 0


def _loss_of(output: Any) -> Tensor | None:
    """The loss in what ``training_step`` returned (a tensor, or a dict's ``loss``)."""
    if isinstance(output, Mapping):
        output = output.get("loss")
    return output if isinstance(output, Tensor) else None


class TrainingStepLoss(nn.Module):
    """A LightningModule's ``training_step`` on a stored batch, as a network: its input is a
    tensor of example indices, its output the loss ``training_step`` returns on those examples.

    The preflight checks of the loss (gradient check, overfitting a tiny subset) run on it with
    ``loss_fn = lambda loss, _: loss``; ``.double()`` and ``.cpu()`` carry the batch along (its
    tensors are buffers). The module is the caller's (checks work on copies of this wrapper).

    Example
    -------
    >>> import torch
    >>> import pytorch_lightning as pl
    >>> class Line(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(2, 1)
    ...     def training_step(self, batch, batch_idx):
    ...         return (self.fc(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()
    >>> step = TrainingStepLoss(Line(), {"x": torch.randn(6, 2), "y": torch.randn(6)})
    >>> step(torch.arange(3)).shape
    torch.Size([])
    """

    def __init__(self, module: nn.Module, batch: Any):
        super().__init__()
        self.module = module
        self._names: list[str] = []

        def keep(tensor: Tensor) -> _Buffer:
            name = f"batch_{len(self._names)}"
            self.register_buffer(name, tensor.detach(), persistent=False)
            self._names.append(name)
            return _Buffer(name)

        self._layout = _map_leaves(batch, Tensor, keep)  # the batch, each tensor named by its buffer

    def batch(self, index: Tensor) -> Any:
        """The stored batch's examples ``index`` (a tensor of no dimension is shared by all)."""

        def pick(buffer: _Buffer) -> Tensor:
            stored = getattr(self, buffer.name)
            return stored[index] if stored.dim() > 0 else stored

        return _map_leaves(self._layout, _Buffer, pick)

    def forward(self, index: Tensor) -> Tensor:
        loss = _loss_of(self.module.training_step(self.batch(index), 0))
        if loss is None:
            raise ValueError("training_step returned no loss on the preflight batch")
        return loss


@dataclasses.dataclass(frozen=True)
class _Buffer:
    """Where a tensor of the batch layout is kept: the name of :class:`TrainingStepLoss`'s buffer."""

    name: str


class _ReplayedLoss:
    """``loss_fn(outputs, y)``: ``training_step`` of a copy of the module whose ``forward``
    returns ``outputs``, on the batch ``(x, y)``: the module's own loss of given outputs (valid
    when ``training_step`` calls ``self(x)`` once and computes the loss from it)."""

    def __init__(self, module: nn.Module, x: Tensor):
        self.module = copy.deepcopy(module)
        self.x = x
        self.calls = 0

    def __call__(self, outputs: Tensor, y: Tensor) -> Tensor:
        def forward(*_args: Any, **_kwargs: Any) -> Tensor:
            self.calls += 1
            return outputs

        self.module.forward = forward  # the instance attribute shadows the class's forward
        try:
            loss = _loss_of(self.module.training_step((self.x[: len(y)], y), 0))
        finally:
            del self.module.forward
        if loss is None:
            raise ValueError("training_step returned no loss")
        return loss


def _loss_name(outputs: Tensor, y: Tensor, loss: float) -> str | None:
    """babysit's name of the loss ``training_step`` computed from ``outputs`` and ``y`` (its
    value ``loss``): the standard loss that gives the same number, else None."""
    candidates: dict[str, Callable[[], Tensor]] = {}
    if outputs.dim() == 2 and outputs.shape[1] > 1 and not torch.is_floating_point(y) and y.dim() == 1:
        candidates["cross_entropy"] = lambda: F.cross_entropy(outputs, y)
    if torch.is_floating_point(y) and outputs.shape == y.shape:
        candidates["mse"] = lambda: F.mse_loss(outputs, y)
        if bool(((y == 0) | (y == 1)).all()):
            candidates["bce"] = lambda: F.binary_cross_entropy_with_logits(outputs, y)
    for name, reference in candidates.items():
        value = float(reference())
        if abs(value - loss) <= REPLAY_TOLERANCE * max(abs(loss), 1e-6):
            return name
    return None


def _without_prefix(found: Finding, prefix: str) -> Finding:
    """A finding about ``TrainingStepLoss`` named in the module's own layer names."""
    layer = found.layer.removeprefix(prefix) if found.layer else found.layer
    evidence = {k: ({name.removeprefix(prefix): v for name, v in value.items()} if isinstance(value, dict) else
                    [name.removeprefix(prefix) for name in value] if k == "failing_layers" and isinstance(value, list)
                    else value) for k, value in found.evidence.items()}
    return dataclasses.replace(found, layer=layer, message=found.message.replace(f"'{prefix}", "'"),
                               evidence=evidence)


def lightning_preflight(module: nn.Module, batch: Any, *, seed: int = 0,
                        checks: tuple[str, ...] = FORWARD_CHECKS + STEP_CHECKS
                        ) -> tuple[list[Finding], dict[str, str]]:
    """babysit's preflight on a LightningModule and one of its training batches (already on
    the module's device), with ``training_step``'s loss. Returns the findings and the checks
    skipped, with why (``{check: reason}``). The module and the random number generators are
    left as they were; no check raises.

    Example
    -------
    >>> import torch
    >>> import pytorch_lightning as pl
    >>> class Net(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    ...     def forward(self, x):
    ...         return self.net(x)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return torch.nn.functional.cross_entropy(self(x), y)
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(64, 4) * 100 + 50  # raw, unscaled inputs
    >>> found, skipped = lightning_preflight(Net(), (x, x[:, :3].argmax(1)))
    >>> [f.id for f in found], skipped
    (['inputs_not_normalized'], {})
    """
    found: list[Finding] = []
    skipped: dict[str, str] = {}
    with global_rng_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() on a copy without a trainer warns on every call
        forward = [c for c in checks if c in FORWARD_CHECKS]
        if forward:
            found += _forward_checks(module, batch, forward, seed, skipped)
        step = [c for c in checks if c in STEP_CHECKS]
        if step:
            found += _step_checks(module, batch, step, seed, skipped)
    return found, skipped


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _forward_checks(module: nn.Module, batch: Any, checks: list[str], seed: int,
                    skipped: dict[str, str]) -> list[Finding]:
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)
            and len(batch[0]) == len(batch[1]) >= 2):
        skipped.update(dict.fromkeys(checks, "the batch is not an (x, y) pair of tensors"))
        return []
    x, y = (t.detach() for t in batch)
    task = "regression" if torch.is_floating_point(y) else "classification"
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    loss_name = None
    try:
        probe = copy.deepcopy(module).eval()
        with torch.no_grad():
            outputs = probe(x)
            real = _loss_of(probe.training_step((x, y), 0))
            replay = _ReplayedLoss(probe, x)
            replayed = replay(outputs, y)
        if not isinstance(outputs, Tensor) or outputs.shape[:1] != x.shape[:1]:
            raise ValueError("forward(x) does not return one output per example")
        if real is not None and replay.calls == 1 and \
                abs(float(replayed) - float(real)) <= REPLAY_TOLERANCE * max(abs(float(real)), 1e-6):
            loss_fn = _ReplayedLoss(module, x)
            loss_name = _loss_name(outputs, y, float(real))
    except Exception as error:  # a forward that needs more than x: the forward checks do not apply
        skipped.update(dict.fromkeys(checks, f"forward(x) failed: {_why(error)}"))
        return []

    def unusable(_outputs: Tensor, _y: Tensor) -> Tensor:
        raise ValueError("training_step's loss cannot be replayed on given outputs")

    found: list[Finding] = []
    for check in checks:
        if check == "initial_loss_off" and loss_name is None:
            skipped[check] = ("training_step's loss is not recognisably cross-entropy, BCE or MSE of "
                              "forward(x)" if loss_fn is not None else "training_step does not compute its loss "
                              "from one call of forward(x)")
            continue
        try:  # batch_mixing falls back to a random projection of the outputs when the loss raises
            found += preflight_checks(module, loss_fn or unusable, (x, y), task=task, loss_name=loss_name,
                                      seed=seed, checks=(check,))
        except Exception as error:
            skipped[check] = _why(error)
    return found


def _step_checks(module: nn.Module, batch: Any, checks: list[str], seed: int,
                 skipped: dict[str, str]) -> list[Finding]:
    examples = _examples(batch)
    if examples < 2:
        skipped.update(dict.fromkeys(checks, "the batch's tensors share no batch dimension of 2 or more"))
        return []
    step = TrainingStepLoss(module, batch)
    indices = torch.arange(examples)
    found: list[Finding] = []
    for check in checks:
        try:
            # the output is the loss itself; "regression": success is judged on the loss alone
            found += [_without_prefix(f, "module.") for f in
                      preflight_checks(step, lambda loss, _targets: loss, (indices, indices.clone()),
                                       task="regression", seed=seed, checks=(check,))]
        except Exception as error:
            skipped[check] = _why(error)
    return found


# --------------------------------------------------------------------------- logged metrics


def epoch_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's ``trainer.callback_metrics`` as the scalars babysit's diagnosis reads:
    ``_step`` metrics dropped, ``_epoch`` suffixes removed (they win over a plain name),
    ``/`` read as ``_``, ``valid_`` / ``validation_`` as ``val_``, ``_accuracy`` as ``_acc``;
    only numbers and one-element tensors; Lightning's ``epoch`` / ``step`` left out.

    >>> epoch_scalars({"train_loss_step": 0.9, "train_loss_epoch": torch.tensor(0.75),
    ...                "valid/accuracy": torch.tensor(0.5), "epoch": 3, "hist": torch.ones(3)})
    {'train_loss': 0.75, 'val_acc': 0.5}
    """
    scalars: dict[str, float] = {}
    from_epoch: set[str] = set()
    for key, value in metrics.items():
        if key.endswith("_step"):
            continue
        name = key.removesuffix("_epoch").replace("/", "_")
        for old, new in (("validation_", "val_"), ("valid_", "val_")):
            if name.startswith(old):
                name = new + name.removeprefix(old)
        if name.endswith("_accuracy"):
            name = name.removesuffix("_accuracy") + "_acc"
        if name in ("epoch", "step") or (name in from_epoch and not key.endswith("_epoch")):
            continue
        if isinstance(value, Tensor):
            if value.numel() != 1:
                continue
            value = value.detach().float().item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        scalars[name] = float(value)
        if key.endswith("_epoch"):
            from_epoch.add(name)
    return scalars


def record_metrics(record: dict[str, Any], stats: tuple[str, ...] = LOGGED_STATS) -> dict[str, float]:
    """A monitor record's per-layer statistics as logger metrics ``babysit/<stat>/<layer>``
    (finite values of ``stats`` only).

    >>> record_metrics({"step": 1, "layers": {"fc": {"update_ratio": 1e-3, "grad_norm": 2.0},
    ...                                       "act": {"dead_fraction": float("nan")}}})
    {'babysit/update_ratio/fc': 0.001}
    """
    metrics = {}
    for layer, entry in record.get("layers", {}).items():
        for stat in stats:
            value = entry.get(stat)
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[f"babysit/{stat}/{layer}"] = float(value)
    return metrics


# --------------------------------------------------------------------------- the callback


class Babysitter(*_CALLBACK_BASES):  # type: ignore[misc]
    """babysit's checks, monitors, diagnosis and report for a Lightning fit (see the module).

    Parameters
    ----------
    out : the run directory (``runs/x``; the next free name when it holds a run). Default
        ``<trainer.log_dir>/babysit``: beside the logger's files, or under
        ``default_root_dir`` without a logger.
    every : sample the per-layer statistics every N optimizer steps (the first step always).
    preflight : run the preflight checks on the first training batch.
    report : draw report.html at the end of the fit.
    explosion_factor : stop the fit once the loss exceeds this multiple of the first.
    name : the run's name (default the directory's).
    quiet : print nothing (by default one line at the end names the directory and the worst
        finding, and one when the fit is stopped).

    After the fit, :attr:`path` is the run directory, :attr:`summary` its summary.json and
    :attr:`found` its findings.
    """

    def __init__(self, out: str | Path | None = None, *, every: int = 10, preflight: bool = True,
                 report: bool = True, explosion_factor: float = EXPLOSION_FACTOR, name: str | None = None,
                 quiet: bool = False):
        if every < 1:
            raise ValueError(f"Babysitter: every must be >= 1, got {every}")
        self.out, self.every, self.run_preflight, self.report = out, every, preflight, report
        self.explosion_factor, self.name, self.quiet = explosion_factor, name, quiet
        self.watch: RunWatch | None = None
        self.path: Path | None = None
        self.summary: dict[str, Any] = {}
        self.found: list[Finding] = []
        self.preflight_found: list[Finding] = []
        self.preflight_skipped: dict[str, str] = {}
        self._active = False
        self._start_step = self._last_step = 0
        self._validated = False
        self._epoch_done: tuple[Any, bool] | None = None  # (its lr, whether validation ran) until recorded
        self._pending: list[dict[str, Any]] = []  # monitor records not yet sent to the loggers

    # ------------------------------------------------------------------ Lightning's hooks

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self.watch, self.path, self.summary, self.found = None, None, {}, []
        self.preflight_found, self.preflight_skipped = [], {}
        self._active = trainer.global_rank == 0
        self._start_step = trainer.global_step
        self._last_step = trainer.global_step
        self._validated = False
        self._epoch_done = None
        self._pending = []

    def on_train_batch_start(self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        if self._active and self.watch is None:
            self._start(trainer, pl_module, batch)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.watch is None or trainer.global_step == self._last_step:
            return  # accumulating gradients, or the step was skipped: no optimizer step to watch
        self._last_step = trainer.global_step
        loss = _loss_of(outputs)
        if loss is None:
            return
        accumulated = getattr(trainer, "accumulate_grad_batches", 1) or 1
        if accumulated != 1 and pl_module.automatic_optimization:
            loss = loss * accumulated  # Lightning hands over the loss divided by the accumulation
        if not self.watch.step(loss) and not trainer.should_stop:
            trainer.should_stop = True  # the fit ends after this batch (min_epochs / min_steps permitting)
            guard = self.watch.monitor.guard
            if not self.quiet and guard is not None:
                print(f"babysit: {guard.id}: {guard.message}", file=sys.stderr)

    def on_validation_end(self, trainer: Any, pl_module: nn.Module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        # the epoch's figures are read when the next epoch starts (or the fit ends): callbacks run
        # before LightningModule.on_train_epoch_end, where many modules log their epoch metrics
        if self.watch is not None:
            self._epoch_done = (self.watch.optimizer.param_groups[0]["lr"], self._validated)
        self._validated = False

    def on_train_epoch_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self._record_epoch(trainer)

    def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._record_epoch(trainer)

    def _record_epoch(self, trainer: Any) -> None:
        """The last finished epoch's ``callback_metrics`` as a line of metrics.jsonl, and its
        monitor samples to the loggers."""
        if self.watch is None or self._epoch_done is None:
            return
        lr, validated = self._epoch_done
        self._epoch_done = None
        scalars = epoch_scalars(trainer.callback_metrics)
        if not validated:  # Lightning keeps the last validation's values between validations
            scalars = {k: v for k, v in scalars.items() if not k.startswith("val_")}
        # the lr the epoch ran with (an epoch-wise schedule has stepped since)
        self.watch.epoch(**{**scalars, "lr": float(lr.item() if isinstance(lr, Tensor) else lr)})
        self.watch.monitor.flush()  # the epoch's samples: to monitors.jsonl and the pending list
        pending, self._pending = self._pending, []
        for record in pending:
            metrics = record_metrics(record)
            if metrics:
                self._log_metrics(trainer, metrics, self._start_step + record["step"] - 1)

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._finish(trainer, pl_module)

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        try:
            self._finish(trainer, pl_module)
        except Exception as error:  # the fit's own exception is the one to see
            print(f"babysit: could not finish the run directory after the fit failed: {_why(error)}",
                  file=sys.stderr)

    # ------------------------------------------------------------------ the run

    def _start(self, trainer: Any, pl_module: nn.Module, batch: Any = None) -> None:
        if self.run_preflight and batch is not None and trainer.global_step == 0:
            self.preflight_found, self.preflight_skipped = lightning_preflight(pl_module, batch)
            self._log_text(trainer, "babysit/preflight", findings_markdown(self.preflight_found))
        optimizers = list(trainer.optimizers)
        if not optimizers:
            self._active = False
            if not self.quiet:
                print("babysit: the module has no optimizer; nothing to watch", file=sys.stderr)
            return
        out = Path(self.out) if self.out is not None else Path(trainer.log_dir or trainer.default_root_dir) / "babysit"
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        about: dict[str, Any] = {"lightning": {
            "module": type(pl_module).__name__, "max_epochs": max_epochs,
            "max_steps": trainer.max_steps if trainer.max_steps > 0 else None,
            "accumulate_grad_batches": trainer.accumulate_grad_batches, "precision": str(trainer.precision),
            "optimizers": len(optimizers)}}
        if self.preflight_skipped:
            about["preflight_skipped"] = dict(self.preflight_skipped)
        # the monitors hook the module now: after the preflight, whose copies would carry the hooks
        self.watch = RunWatch(pl_module, optimizers[0], out, every=self.every, explosion_factor=self.explosion_factor,
                              epochs=max_epochs, name=self.name, report=self.report, quiet=self.quiet,
                              recorded_by="lightning", about=about)
        self.watch.add_findings(self.preflight_found)
        self.path = self.watch.path
        write = self.watch.monitor.sink

        def sink(record: dict[str, Any]) -> None:
            if write is not None:
                write(record)
            self._pending.append(record)

        self.watch.monitor.sink = sink

    def _finish(self, trainer: Any, pl_module: nn.Module) -> None:
        if not self._active:
            return
        self._active = False
        if self.watch is None:  # no batch ran: the directory still says so
            self._start(trainer, pl_module)
        if self.watch is None:
            return
        self._record_epoch(trainer)
        self.watch.close()
        self.summary = self.watch.summary
        self.found = self.watch.findings()
        counts = {f"babysit/findings/{severity}": float(sum(f.severity == severity for f in self.found))
                  for severity in ("error", "warning", "info")}
        self._log_metrics(trainer, counts, trainer.global_step)
        self._log_text(trainer, "babysit/findings", findings_markdown(self.found))

    # ------------------------------------------------------------------ the Trainer's loggers

    def _log_metrics(self, trainer: Any, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=step)
            except Exception as error:  # a logger's failure is not the fit's
                self._logger_failed(logger, error)

    def _log_text(self, trainer: Any, tag: str, text: str) -> None:
        """``text`` on the loggers with a text tab (TensorBoard's ``add_text``); others skip it."""
        for logger in trainer.loggers:
            if not hasattr(type(logger), "experiment"):
                continue
            try:
                experiment = logger.experiment
                add_text = getattr(experiment, "add_text", None)
                if callable(add_text):
                    add_text(tag, text, global_step=trainer.global_step)
            except Exception as error:
                self._logger_failed(logger, error)

    def _logger_failed(self, logger: Any, error: Exception) -> None:
        if not self.quiet:
            print(f"babysit: {type(logger).__name__} did not take babysit's figures: {_why(error)}", file=sys.stderr)


__all__ = ["FORWARD_CHECKS", "STEP_CHECKS", "Babysitter", "TrainingStepLoss", "epoch_scalars",
           "lightning_preflight", "record_metrics"]
