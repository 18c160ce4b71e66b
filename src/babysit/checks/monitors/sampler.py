"""The sampling side of the live monitors: per-layer statistics recorded while a network
trains, and the explosion guard on its loss.

CS231n's "babysitting the learning process" asks a person to watch, per layer, the
activation distributions (dead ReLUs, saturated tanh/sigmoid units, activations shrinking to
zero with depth), the gradient norms (vanishing or exploding with depth) and the ratio of
the update to the weights, ``||Δw|| / ||w||``, which should sit near 1e-3. A
:class:`Monitor` records these every ``every`` optimizer steps and nothing in between:

- forward hooks on the nonlinearities are registered just before a sampled step and removed
  after it, so unsampled steps run the plain model;
- the weights are copied (into one reused buffer) just before a sampled step; after the
  optimizer's step, :meth:`Monitor.observe_loss` (called once a step; a counter increment on
  unsampled steps) takes the norms of each layer's gradient (still in ``.grad``), weights and
  update ``w_after - w_before`` in one call, and all the numbers of a sample leave the device
  in one transfer.

Each sample is one record (the lines of ``monitors.jsonl``)::

    {"step": 11, "loss": 2.07, "layers": {
        "hidden.0.1": {"type": "ReLU", "act_mean": 0.41, "act_std": 0.62, "dead_fraction": 0.0,
                       "dormant_fraction": 0.02},
        "hidden.0.0": {"type": "Linear", "grad_norm": 0.8, "weight_norm": 5.7, "update_ratio": 1.1e-3},
        ...}}

with ``hist`` (``{"lo", "hi", "counts"}``) on the activation layers of the first sample and
of every ``histogram_every``-th. :func:`~babysit.checks.monitors.rules.monitor_findings`
turns a list of records into findings; the explosion guard (:meth:`Monitor.observe_loss`) flags a loss above
``explosion_factor`` x the first one, or a non-finite loss.

Example
-------
>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
>>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
>>> monitor = Monitor(net, opt, every=5)
>>> x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
>>> for _ in range(10):
...     loss = nn.functional.cross_entropy(net(x), y)
...     opt.zero_grad(); loss.backward(); opt.step()
...     _ = monitor.observe_loss(loss)
>>> [r["step"] for r in monitor.records], sorted(monitor.records[0]["layers"])
([1, 6], ['0', '1', '2'])
>>> monitor.detach()
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from babysit.checks.findings import Finding
from babysit.checks.monitors.rules import (
    DORMANT_TAU,
    SATURATION_LEVEL,
    monitor_findings,
    monitor_summary,
)
from babysit.config import EXPLOSION_FACTOR
from babysit.nets.layers import ACTIVATION_TYPES, WEIGHT_LAYER_TYPES
from babysit.rundir import json_line

_RELU_LIKE = (nn.ReLU, nn.ReLU6)
_TANH_LIKE = (nn.Tanh, nn.Hardtanh, nn.Softsign)
_SIGMOID_LIKE = (nn.Sigmoid, nn.Hardsigmoid)
_INPUT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def monitored_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Parameter]]]:
    """The (name, module) nonlinearities whose outputs are watched and the (layer name,
    weight) pairs whose gradients and updates are, both in registration order.

    Weights are those of Linear / Conv layers; in a model without them (a hand-written
    ``nn.Parameter`` model), every parameter of 2+ dimensions. When the model has no
    nonlinearity modules (it calls ``torch.relu`` inside ``forward``), the weight layers'
    outputs are watched instead (their mean, std and histogram).

    Recurrent layers (``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``) count as both: their output
    sequence of hidden states is watched like an activation (its gates' nonlinearities are
    inside the module), and each of their input and recurrent matrices (``weight_ih_l0``,
    ``weight_hh_l0``, ...) is a weight, named ``<layer>.<parameter>``.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> acts, weights = monitored_layers(net)
    >>> [name for name, _ in acts], [name for name, _ in weights]
    (['1'], ['0', '2'])
    """
    activations = [(name, m) for name, m in model.named_modules() if isinstance(m, (*ACTIVATION_TYPES, nn.RNNBase))]
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]
    weights = []
    for name, m in model.named_modules():
        if isinstance(m, nn.RNNBase):
            weights += [(f"{name}.{key}", p) for key, p in m.named_parameters(recurse=False) if key.startswith("weight_")]
        elif isinstance(m, WEIGHT_LAYER_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter):
            weights.append((name, m.weight))
    if not weights:
        weights = [(name.removesuffix(".weight"), p) for name, p in model.named_parameters() if p.dim() >= 2]
    if not activations:
        activations = layers
    return activations, weights


class Monitor:
    """Samples per-layer statistics of ``model`` every ``every`` steps of ``optimizer``.

    Parameters
    ----------
    model : the network being trained.
    optimizer : its optimizer; the monitor hooks its ``step``.
    every : sample every N-th optimizer step (the first step is always sampled: the state
        at initialisation).
    histogram_every : activation histograms on every N-th sample (and the first).
    bins : histogram bins.
    explosion_factor : :meth:`observe_loss` flags a loss above this multiple of the first.
    sink : called with each finished record (the runner writes ``monitors.jsonl``).
    start_step : optimizer steps already taken (a resumed run).
    initial_loss : the first loss of the run, when resuming.
    activations : hook the nonlinearities and the inputs of the weight layers (off for a
        ``torch.compile``-d forward, where adding and removing hooks would recompile the graph;
        the weight statistics remain).
    check_cleared : at each sampled step, look whether the gradient was cleared before the
        backward pass (``optimizer.zero_grad()``): a user's loop may forget it; babysit's own
        loop never does (and a GAN's second network legitimately holds the first's gradient).

    The records are in :attr:`records`; :meth:`findings` applies the rules to them.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 10,
                 histogram_every: int = 10, bins: int = 30, explosion_factor: float = EXPLOSION_FACTOR,
                 sink: Callable[[dict[str, Any]], None] | None = None, start_step: int = 0,
                 initial_loss: float | None = None, activations: bool = True, check_cleared: bool = False):
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.histogram_every = histogram_every
        self.bins = bins
        self.explosion_factor = explosion_factor
        self.sink = sink
        self.step = start_step
        self.initial_loss = initial_loss
        self._records: list[dict[str, Any]] = []
        self._raw: list[tuple[Any, ...]] = []  # samples not yet turned into records
        self.guard: Finding | None = None  # set when the explosion guard trips
        self.activations, self.weights = monitored_layers(model)
        # a network without nonlinearity modules (F.relu in its forward: nothing to hook): the
        # inputs of every Linear / Conv layer after the first instead, since a unit that is
        # exactly 0 for every example of the batch is dead whichever function made it. (With
        # modules the outputs say it, and these reductions would double a sample's cost.)
        has_modules = any(isinstance(m, (*ACTIVATION_TYPES, nn.RNNBase)) for m in model.modules())
        self.inputs = [] if has_modules else [
            (name, m) for name, m in model.named_modules() if isinstance(m, _INPUT_LAYERS)][1:]
        if not activations:
            self.activations, self.inputs = [], []
        self.check_cleared = check_cleared
        self.chance_loss: float | None = None  # the loss of a guess that ignores the inputs (loss_at_chance)
        self._stale: tuple[torch.Tensor, torch.Tensor] | None = None  # (|grad before backward|, |new gradient|)
        self._input_stats: dict[str, tuple[list[torch.Tensor], int, int]] = {}  # (numbers, units, elements)
        self._samples = 0
        self._hooks: list[Any] = []
        # per activation layer: (its numbers, element count, units of dead_fraction, dead / saturated / None,
        # units of dormant_fraction, whether the output was fp16)
        self._act_stats: dict[str, tuple[list[torch.Tensor], int, int, str | None, int, bool]] = {}
        self._types = {name: type(m).__name__ for name, m in model.named_modules()}
        for name, module in model.named_modules():  # a recurrent matrix takes its layer's type
            if isinstance(module, nn.RNNBase):
                self._types.update({f"{name}.{key}": type(module).__name__ for key, _ in module.named_parameters()})
        self._back: dict[str, torch.Tensor] = {}
        self._hists: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._want_hist = False
        self._before: list[torch.Tensor] = []  # the weights before the sampled step (one buffer, reused)
        self._armed = False
        self._hook_fns = {name: self._make_hook(name, module) for name, module in self.activations}
        self._input_fns = {name: self._make_input_hook(name) for name, _ in self.inputs}
        if self._sampled(self.step + 1):
            self._arm()

    # ------------------------------------------------------------------ sampling

    def _sampled(self, step: int) -> bool:
        return (step - 1) % self.every == 0

    def _arm(self) -> None:
        """Before a sampled step: hook the nonlinearities for its forward pass and copy the
        weights (the update is the difference after the step)."""
        self._want_hist = self._samples % self.histogram_every == 0
        for name, module in self.activations:
            self._hooks.append(module.register_forward_hook(self._hook_fns[name]))
        for name, module in self.inputs:
            self._hooks.append(module.register_forward_pre_hook(self._input_fns[name]))
        if self.check_cleared and self.weights and self.weights[0][1].requires_grad:
            self._hooks.append(self.weights[0][1].register_hook(self._cleared_hook))
        if self.weights:
            params = [w.detach() for _, w in self.weights]
            if not self._before:
                self._before = [torch.empty_like(w) for w in params]
            torch._foreach_copy_(self._before, params)
        self._armed = True

    def rearm(self) -> None:
        """The weights were set back outside a step (a rollback): if the next step is sampled, copy
        them again, so that its update is measured from where it really starts."""
        if self._armed:
            self._disarm()
            self._arm()

    def _disarm(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _make_hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        relu = isinstance(module, _RELU_LIKE)
        tanh = isinstance(module, _TANH_LIKE)
        sigmoid = isinstance(module, _SIGMOID_LIKE)
        # dormant units (Sokar et al. 2023) on the nonlinearities and recurrent layers only: a Linear /
        # Conv output watched in their absence is a pre-activation, whose size says nothing about it
        dormant = isinstance(module, (*ACTIVATION_TYPES, nn.RNNBase))
        recurrent = isinstance(module, nn.RNNBase)

        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, tuple):  # a recurrent layer: (hidden-state sequence, final state)
                output = output[0]
            if name in self._act_stats or not mod.training or not isinstance(output, torch.Tensor):
                return  # the first training forward only (L-BFGS calls forward several times)
            a = output.detach()
            half = a.dtype == torch.float16  # fp16 autocast: how near the outputs come to fp16's largest value
            if not a.is_floating_point() or a.dtype in (torch.float16, torch.bfloat16):
                a = a.float()
            # sum and sqrt(sum of squares), the mean and std then computed on the host: two cheap
            # reductions where torch.std_mean costs 10-50x more on the CPU. (In float32 an std
            # below ~1e-3 of the mean reads as about that much: still far below the first layer's.)
            stats = [a.sum(), torch.linalg.vector_norm(a)]
            units = 0
            if relu:
                # a unit (feature, or channel of a conv) is dead when it is zero for every example
                # and position; reduce the batch dim first, which is the cheap order in memory
                per_unit = a.amax(dim=0)
                if per_unit.dim() > 1:
                    per_unit = per_unit.flatten(1).amax(dim=1)
                units = per_unit.numel()
                stats.append((per_unit <= 0).sum(dtype=a.dtype))
            elif tanh:
                stats.append((a.abs() > SATURATION_LEVEL).sum(dtype=a.dtype))
            elif sigmoid:
                stats.append(((a - 0.5).abs() > SATURATION_LEVEL - 0.5).sum(dtype=a.dtype))
            dormant_units = 0
            if dormant and a.dim() >= 2:
                # Sokar et al. 2023: unit i's score s_i = E|h_i| / mean_k E|h_k| over the batch and
                # positions; dormant when s_i <= tau. One L1 reduction over every dim but the units'
                # (no |a| copy); sums instead of means, since the count per unit cancels in the ratio.
                # Units are dim 1 (features, a conv's channels) as for dead units; a recurrent layer's
                # hidden units are its last dim (batch_first or not).
                unit_dim = a.dim() - 1 if recurrent else 1
                per_unit = torch.linalg.vector_norm(a, 1, dim=[d for d in range(a.dim()) if d != unit_dim])
                dormant_units = per_unit.numel()
                stats.append((per_unit <= DORMANT_TAU * per_unit.mean()).sum(dtype=a.dtype))
            if half:
                stats.append(torch.linalg.vector_norm(a, math.inf))  # max |a|, for fp16_overflow
            self._act_stats[name] = (stats, a.numel(), units, "dead" if relu else
                                     "saturated" if tanh or sigmoid else None, dormant_units, half)
            if output.requires_grad:
                # the gradient arriving at this layer's output on the way back (Glorot & Bengio
                # 2010 watch its variance across depth): the vanishing / exploding signal
                def grad_hook(grad: torch.Tensor) -> None:
                    if name not in self._back:
                        self._back[name] = torch.linalg.vector_norm(grad.detach())

                output.register_hook(grad_hook)
            if self._want_hist:
                lo, hi = torch.aminmax(a)
                self._hists[name] = (torch.stack([lo, hi]), a)

        return hook

    def _make_input_hook(self, name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: Any) -> None:
            if name in self._input_stats or not mod.training or not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            x = inputs[0].detach()
            if not x.is_floating_point() or x.dim() < 2:
                return
            x = x.float()
            # one unit per feature (Linear: the last dim) or channel (Conv: dim 1), over every
            # example and position
            per_unit = (x.abs().flatten(0, -2).amax(0) if isinstance(mod, nn.Linear)
                        else x.abs().transpose(0, 1).flatten(1).amax(1))
            lo, hi = torch.aminmax(x)
            numbers = [(per_unit == 0).sum(dtype=x.dtype), lo, hi, (x == 0).sum(dtype=x.dtype),
                       (x.abs() > SATURATION_LEVEL).sum(dtype=x.dtype),
                       ((x - 0.5).abs() > SATURATION_LEVEL - 0.5).sum(dtype=x.dtype)]
            self._input_stats[name] = (numbers, per_unit.numel(), x.numel())  # the sizes stay on the host

        return hook

    def _cleared_hook(self, grad: torch.Tensor) -> None:
        """The first backward pass of a sampled step reaches the first weight: what its
        ``.grad`` holds before the new gradient is added (zero or None after ``zero_grad``)."""
        if self._stale is None:
            weight = self.weights[0][1]
            old = weight.grad
            stale = torch.linalg.vector_norm(old.detach()) if old is not None else grad.new_zeros(())
            self._stale = (stale.float(), torch.linalg.vector_norm(grad.detach()).float())

    def _collect(self) -> None:
        """Everything of this sample in one device-to-host transfer."""
        n = len(self.weights) if self._armed else 0
        act_names = [name for name, _ in self.activations if name in self._act_stats]
        scalars: list[torch.Tensor] = []
        if n:
            # the step's gradients are still in .grad (the next zero_grad comes later); norms of
            # every layer's gradient, weight and update in one call
            current = [w.detach() for _, w in self.weights]
            grads = [w.grad if w.grad is not None else self._no_grad(w) for _, w in self.weights]
            torch._foreach_sub_(self._before, current)  # the copy becomes -Δw
            scalars += torch._foreach_norm(grads + current + self._before)
        for name in act_names:
            scalars += self._act_stats[name][0]
            back = self._back.get(name)
            scalars.append(back if back is not None else self._no_grad(scalars[-1]).reshape(()))
        input_names = [name for name, _ in self.inputs if name in self._input_stats]
        for name in input_names:
            scalars += self._input_stats[name][0]
        input_layout = [(name, *self._input_stats[name][1:]) for name in input_names]
        stale = self._stale
        if stale is not None:
            scalars += list(stale)
        # every number of the sample in one stack, one device-to-host transfer; turning them into
        # a record waits for the next read of .records (in bulk: cheaper than one at a time)
        flat = torch.stack([t.float() for t in scalars]).tolist() if scalars else []
        layout = [(name, *self._act_stats[name][1:]) for name in act_names]
        hists = {name: self._histogram(*self._hists[name]) for name in self._hists}
        self._raw.append((self.step, n, flat, (layout, input_layout, stale is not None), hists))
        self._samples += 1
        self._act_stats.clear()
        self._input_stats.clear()
        self._stale = None
        self._back.clear()
        self._hists.clear()
        self._armed = False

    def _record(self, step: int, n: int, flat: list[float],
                layouts: tuple[list[tuple[str, int, int, str | None, int, bool]], list[tuple[str, int, int]], bool],
                hists: dict[str, dict[str, Any]], loss: float) -> dict[str, Any]:
        """One sample's numbers as a record: 3n weight numbers (gradient, weight and update
        norms), then per activation layer: sum, sqrt(sum of squares), [dead or saturated
        count], [dormant count], [max |a| of an fp16 output], backpropagated gradient norm; then per watched layer input: dead units,
        min, max, zeros, |x| > 0.99, |x - 0.5| > 0.49 (its units and elements are in the layout); then, when the cleared
        check ran, the norms of the gradient found before the backward pass and of the new one."""
        layout, input_layout, has_stale = layouts
        grad_norms, weight_norms, update_norms = flat[:n], flat[n:2 * n], flat[2 * n:3 * n]
        at = 3 * n
        layers: dict[str, dict[str, Any]] = {}
        for name, count, units, counted, dormant_units, half in layout:
            width = 2 + bool(counted) + bool(dormant_units) + half
            total, root_sq = flat[at:at + 2]
            mean = total / count
            var = max(root_sq * root_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
            entry: dict[str, Any] = {"type": self._types[name], "act_mean": mean, "act_std": math.sqrt(var)}
            if counted == "dead":
                entry["dead_fraction"] = flat[at + 2] / max(units, 1)
            elif counted == "saturated":
                entry["saturated_fraction"] = flat[at + 2] / count
            if dormant_units:
                entry["dormant_fraction"] = flat[at + width - 1 - half] / dormant_units
            if half:
                entry["act_absmax"] = flat[at + width - 1]
            back = flat[at + width]
            if not math.isnan(back):
                entry["act_grad_rms"] = back / math.sqrt(count)
            at += width + 1
            if name in hists:
                entry["hist"] = hists[name]
            layers[name] = entry
        record: dict[str, Any] = {"step": step, "layers": layers, "loss": loss}
        if has_stale:
            stale, fresh = flat[-2:]  # the last two numbers of the sample
            # the gradient left in .grad from before this step's backward, against the new one: 0
            # after zero_grad; about the sum of every earlier step's gradient when it is forgotten
            record["uncleared_grad_ratio"] = stale / fresh if fresh > 0 else (0.0 if stale == 0 else float("inf"))
        for i, (name, w) in enumerate(self.weights[:n]):
            entry = layers.setdefault(name, {"type": self._types.get(name, "Parameter")})
            if not math.isnan(grad_norms[i]):
                entry["grad_norm"] = grad_norms[i]
                entry["grad_rms"] = grad_norms[i] / math.sqrt(max(w.numel(), 1))
            entry["weight_norm"] = weight_norms[i]
            entry["update_ratio"] = update_norms[i] / weight_norms[i] if weight_norms[i] > 0 else float("inf")
        for name, units, count in input_layout:  # after the weights: the layers stay in the network's order
            dead, lo, hi, zeros, beyond_tanh, beyond_sigmoid = flat[at:at + 6]
            at += 6
            entry = layers.setdefault(name, {"type": self._types.get(name, "Parameter")})
            entry["input_dead_fraction"] = dead / max(units, 1)
            # what made the input, read from its range: tanh-like values in (-1, 1) with some
            # below 0; sigmoid-like in [0, 1] with (almost) no exact zeros, which ReLUs make
            if lo < 0 and -1 <= lo and hi <= 1:
                entry["input_saturated_fraction"] = beyond_tanh / max(count, 1)
            elif 0 <= lo and hi <= 1 and zeros <= 0.01 * count:
                entry["input_saturated_fraction"] = beyond_sigmoid / max(count, 1)
        return record

    def flush(self) -> None:
        """Turn the samples taken since the last call into records (and hand them to the sink)."""
        raw, self._raw = self._raw, []
        for sample in raw:
            record = self._record(*sample)
            self._records.append(record)
            if self.sink is not None:
                self.sink(record)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every sample so far as a record (the lines of ``monitors.jsonl``)."""
        self.flush()
        return self._records

    def _no_grad(self, w: torch.Tensor) -> torch.Tensor:
        """A layer without a gradient (frozen, or .grad cleared before observe_loss): NaN norm."""
        return torch.full((1,), math.nan, device=w.device, dtype=w.dtype)

    def _histogram(self, bounds: torch.Tensor, values: torch.Tensor) -> dict[str, Any]:
        lo, hi = bounds.tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return {"lo": lo, "hi": hi, "counts": []}
        hi = max(hi, lo + 1e-6)
        counts = torch.histc(values, bins=self.bins, min=lo, max=hi)
        return {"lo": lo, "hi": hi, "counts": [int(c) for c in counts.tolist()]}

    # ------------------------------------------------------------------ the loss

    def observe_loss(self, loss: torch.Tensor | float) -> Finding | None:
        """Give the monitor the loss of the step just taken: call it once after every
        ``optimizer.step()`` (it counts the steps).

        At a sampled step the statistics are collected, the loss is read (one sync), and the
        explosion guard checks it; the hooks for the next sampled step are set up the step
        before it. Other steps cost a counter increment. Returns the guard's finding
        (``loss_exploded`` or ``nonfinite_loss``) the first time it trips, else None.
        """
        self.step = step = self.step + 1
        every = self.every
        found = self._observe_sampled(loss) if (step - 1) % every == 0 else None
        if step % every == 0:  # the next step is sampled
            self._arm()
        return found

    def _observe_sampled(self, loss: torch.Tensor | float) -> Finding | None:
        self._disarm()
        self._collect()  # the weights are now the updated ones
        value = float(loss.item()) if isinstance(loss, torch.Tensor) else float(loss)
        self._raw[-1] = (*self._raw[-1], value)
        return self.check_loss(value, self.step)

    def check_loss(self, value: float, step: int) -> Finding | None:
        """The explosion guard on one loss value (also used on each epoch's mean loss)."""
        if self.guard is not None:
            return None
        if not math.isfinite(value):
            self.guard = Finding(
                "nonfinite_loss", "error",
                f"The training loss became {value} at step {step}; the weights are no longer usable and the "
                "run was stopped.",
                "Lower the learning rate (3-10x), clip gradients (optimizer.grad_clip), check the data for NaN "
                "or inf, and avoid log(0) in a hand-written loss.",
                {"loss": value, "initial_loss": self.initial_loss, "step": step}, step=step)
            return self.guard
        if self.initial_loss is None:
            self.initial_loss = value
            return None
        # DESIGN.md / CS231n: a loss above ~3x the initial loss means the run is diverging
        limit = self.explosion_factor * self.initial_loss
        if self.initial_loss > 0 and value > limit:
            self.guard = Finding(
                "loss_exploded", "error",
                f"The training loss reached {value:.4g} at step {step}, more than {self.explosion_factor:g}x the "
                f"initial {self.initial_loss:.4g}; training was diverging and was stopped.",
                "Lower the learning rate 3-10x (babysit lr-find suggests one), add warmup, or clip gradients "
                "(optimizer.grad_clip). The last good checkpoint is kept.",
                {"loss": value, "initial_loss": self.initial_loss, "explosion_factor": self.explosion_factor,
                 "step": step}, step=step)
            return self.guard
        return None

    # ------------------------------------------------------------------ results

    def findings(self) -> list[Finding]:
        """The monitor rules over the records so far, plus the guard's finding if it tripped."""
        found = [self.guard] if self.guard is not None else []
        return found + monitor_findings(self.records, chance_loss=self.chance_loss)

    def summary(self) -> dict[str, Any]:
        """Per-layer medians over the run (what the diagnosis and the report read)."""
        return monitor_summary(self.records)

    def detach(self) -> None:
        """Remove every hook (the model and optimizer are as they were) and flush."""
        self._disarm()
        self.flush()


# --------------------------------------------------------------------------- the records as JSON


def monitor_line(record: dict[str, Any]) -> str:
    """A monitor record as one line of ``monitors.jsonl``; NaN / inf (rare: a diverging run)
    become null plus the ``nonfinite`` flag (:func:`babysit.rundir.json_line`'s policy).

    The common case, every number finite, is one ``json.dumps``: the same bytes as
    :func:`~babysit.rundir.json_line` writes, without walking the record first.

    Example
    -------
    >>> monitor_line({"step": 1, "loss": float("nan"), "layers": {"fc": {"grad_norm": 0.5}}})
    '{"step": 1, "loss": null, "layers": {"fc": {"grad_norm": 0.5}}, "nonfinite": {"loss": "nan"}}\\n'
    """
    line = json.dumps(record)
    if "NaN" in line or "Infinity" in line:
        line = json_line(record)
    return line + "\n"


__all__ = ["Monitor", "monitor_line", "monitored_layers"]
