"""Live monitors: per-layer statistics sampled while a network trains, and the rules that
read them.

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
        "hidden.0.1": {"type": "ReLU", "act_mean": 0.41, "act_std": 0.62, "dead_fraction": 0.0},
        "hidden.0.0": {"type": "Linear", "grad_norm": 0.8, "weight_norm": 5.7, "update_ratio": 1.1e-3},
        ...}}

with ``hist`` (``{"lo", "hi", "counts"}``) on the activation layers of the first sample and
of every ``histogram_every``-th. :func:`monitor_findings` turns a list of records into
findings; the explosion guard (:meth:`Monitor.observe_loss`) flags a loss above
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

import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from babysit.checks.findings import Finding

# --------------------------------------------------------------------------- thresholds
# Each is a rule of thumb with its source; the tests build networks on both sides of it.

# CS231n (Neural Networks 3, "ratio of weights:updates"): ||Δw|| / ||w|| "should be
# somewhere around 1e-3"; much lower means the learning rate is probably too low, much
# higher too high. Adam at lr 1e-2 on small nets sits at 1e-2 to 3e-2 and trains well (the
# MNIST-1D examples), so the alarms are two decades either side of the healthy 1e-3.
UPDATE_RATIO_HIGH = 1e-1
UPDATE_RATIO_LOW = 1e-5
# CS231n (Neural Networks 1, "dying ReLU"): "as much as 40% of your network can be dead"
# with a too-high learning rate. A unit counts as dead when it is zero for every example of
# the sampled batch; a layer is flagged when half its units are dead.
DEAD_FRACTION = 0.5
# tanh / sigmoid units are saturated where the local gradient is nearly zero: |tanh| > 0.99
# (tanh' < 0.02) and sigmoid outside (0.01, 0.99) (sigmoid' < 0.0099). A layer is flagged
# when a quarter of its outputs are saturated (CS231n's tanh net with N(0, 1) weights: ~all).
SATURATION_LEVEL = 0.99
SATURATED_FRACTION = 0.25
# CS231n's 10-layer tanh net with N(0, 0.01^2) weights: the activation std falls by about 5x
# a layer "and collapses to zero". Flag a net of 3+ monitored layers whose std keeps shrinking
# layer after layer to below 1% of the first.
COLLAPSE_RATIO = 1e-2
# Gradient RMS (norm / sqrt(numel)) of the first weight layer against the last. Backprop
# through k sigmoid layers multiplies by at most 0.25^k (a 6-layer sigmoid stack: ~2e-4);
# healthy nets of any depth stay within two decades either way.
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
# A pattern must hold in at least half of the last third of the samples to be reported as
# ongoing; one seen only at the start (the first sample, at initialisation) is reported
# as info, since training got past it.
PERSIST_FRACTION = 0.5

_RELU_LIKE = (nn.ReLU, nn.ReLU6)
_TANH_LIKE = (nn.Tanh, nn.Hardtanh, nn.Softsign)
_SIGMOID_LIKE = (nn.Sigmoid, nn.Hardsigmoid)


def _activation_types() -> tuple[type[nn.Module], ...]:
    from babysit.nets.layers import ACTIVATION_TYPES

    return ACTIVATION_TYPES


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
    from babysit.nets.layers import WEIGHT_LAYER_TYPES

    activations = [(name, m) for name, m in model.named_modules() if isinstance(m, (*_activation_types(), nn.RNNBase))]
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
    activations : hook the nonlinearities (off for a ``torch.compile``-d forward, where adding
        and removing hooks would recompile the graph; the weight statistics remain).

    The records are in :attr:`records`; :meth:`findings` applies the rules to them.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 10,
                 histogram_every: int = 10, bins: int = 30, explosion_factor: float = 3.0,
                 sink: Callable[[dict[str, Any]], None] | None = None, start_step: int = 0,
                 initial_loss: float | None = None, activations: bool = True):
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
        if not activations:
            self.activations = []
        self._samples = 0
        self._hooks: list[Any] = []
        self._act_stats: dict[str, tuple[torch.Tensor, int, int, str | None]] = {}
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
        if self.weights:
            params = [w.detach() for _, w in self.weights]
            if not self._before:
                self._before = [torch.empty_like(w) for w in params]
            torch._foreach_copy_(self._before, params)
        self._armed = True

    def _disarm(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _make_hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        relu = isinstance(module, _RELU_LIKE)
        tanh = isinstance(module, _TANH_LIKE)
        sigmoid = isinstance(module, _SIGMOID_LIKE)

        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, tuple):  # a recurrent layer: (hidden-state sequence, final state)
                output = output[0]
            if name in self._act_stats or not mod.training or not isinstance(output, torch.Tensor):
                return  # the first training forward only (L-BFGS calls forward several times)
            a = output.detach()
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
            self._act_stats[name] = (stats, a.numel(), units, "dead" if relu else
                                     "saturated" if tanh or sigmoid else None)
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
        # every number of the sample in one stack, one device-to-host transfer; turning them into
        # a record waits for the next read of .records (in bulk: cheaper than one at a time)
        flat = torch.stack([t.float() for t in scalars]).tolist() if scalars else []
        layout = [(name, *self._act_stats[name][1:]) for name in act_names]
        hists = {name: self._histogram(*self._hists[name]) for name in self._hists}
        self._raw.append((self.step, n, flat, layout, hists))
        self._samples += 1
        self._act_stats.clear()
        self._back.clear()
        self._hists.clear()
        self._armed = False

    def _record(self, step: int, n: int, flat: list[float], layout: list[tuple[str, int, int, str | None]],
                hists: dict[str, dict[str, Any]], loss: float) -> dict[str, Any]:
        """One sample's numbers as a record: 3n weight numbers (gradient, weight and update
        norms), then per activation layer: sum, sqrt(sum of squares), [dead or saturated
        count], backpropagated gradient norm."""
        grad_norms, weight_norms, update_norms = flat[:n], flat[n:2 * n], flat[2 * n:3 * n]
        at = 3 * n
        layers: dict[str, dict[str, Any]] = {}
        for name, count, units, counted in layout:
            width = 3 if counted else 2
            total, root_sq = flat[at:at + 2]
            mean = total / count
            var = max(root_sq * root_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
            entry: dict[str, Any] = {"type": self._types[name], "act_mean": mean, "act_std": math.sqrt(var)}
            if counted == "dead":
                entry["dead_fraction"] = flat[at + 2] / max(units, 1)
            elif counted == "saturated":
                entry["saturated_fraction"] = flat[at + 2] / count
            back = flat[at + width]
            if not math.isnan(back):
                entry["act_grad_rms"] = back / math.sqrt(count)
            at += width + 1
            if name in hists:
                entry["hist"] = hists[name]
            layers[name] = entry
        for i, (name, w) in enumerate(self.weights[:n]):
            entry = layers.setdefault(name, {"type": self._types.get(name, "Parameter")})
            if not math.isnan(grad_norms[i]):
                entry["grad_norm"] = grad_norms[i]
                entry["grad_rms"] = grad_norms[i] / math.sqrt(max(w.numel(), 1))
            entry["weight_norm"] = weight_norms[i]
            entry["update_ratio"] = update_norms[i] / weight_norms[i] if weight_norms[i] > 0 else float("inf")
        return {"step": step, "layers": layers, "loss": loss}

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
        return found + monitor_findings(self.records)

    def summary(self) -> dict[str, Any]:
        """Per-layer medians over the run (what the diagnosis and the report read)."""
        return monitor_summary(self.records)

    def detach(self) -> None:
        """Remove every hook (the model and optimizer are as they were) and flush."""
        self._disarm()
        self.flush()


# --------------------------------------------------------------------------- the rules


def _series(records: list[dict[str, Any]], layer: str, key: str) -> list[float]:
    return [r["layers"][layer][key] for r in records if key in r["layers"].get(layer, {})
            and r["layers"][layer][key] is not None]


def _layer_names(records: list[dict[str, Any]], key: str) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for name, entry in record["layers"].items():
            if key in entry:
                names[name] = None
    return list(names)


def _persistence(flags: list[bool]) -> str | None:
    """'ongoing' when the flag holds in at least half of the last third of the samples,
    'at_init' when it held only at the first sample(s), None otherwise."""
    if not flags:
        return None
    tail = flags[-max(1, len(flags) // 3):]
    if sum(tail) >= PERSIST_FRACTION * len(tail):
        return "ongoing"
    if flags[0]:
        return "at_init"
    return None


def _recovered_step(records: list[dict[str, Any]], flags: list[bool]) -> int | None:
    for record, flag in zip(records, flags, strict=False):
        if not flag:
            return record["step"]
    return None


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def monitor_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-layer medians of the update ratio, gradient norm, dead and saturated fractions.

    Example
    -------
    >>> recs = [{"step": s, "layers": {"fc": {"update_ratio": r, "grad_norm": 0.5}}}
    ...         for s, r in ((1, 0.1), (11, 1e-3), (21, 3e-3))]
    >>> monitor_summary(recs)["update_ratio_median"]  # the first step's update is left out
    {'fc': 0.002}
    """
    out: dict[str, Any] = {"samples": len(records)}
    for key, label in (("update_ratio", "update_ratio_median"), ("grad_norm", "grad_norm_median"),
                       ("dead_fraction", "dead_fraction_median"), ("saturated_fraction", "saturated_fraction_median"),
                       ("act_std", "act_std_median")):
        recs = _after_first_step(records) if key == "update_ratio" else records
        out[label] = {name: _median(_series(recs, name, key)) for name in _layer_names(recs, key)}
    return out


def _after_first_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples after the very first step, whose update is atypical (Adam's first step
    moves every weight by about the lr), unless that leaves too few."""
    return records[1:] if len(records) > 2 else records


def monitor_findings(records: list[dict[str, Any]]) -> list[Finding]:
    """The while-training findings of a list of monitor records (``monitors.jsonl``).

    ``dead_relu``, ``saturated_activations``, ``activation_collapse``,
    ``vanishing_gradients``, ``exploding_gradients``, ``update_ratio_high`` and
    ``update_ratio_low``: at most one finding per id, naming the worst layer, with every
    affected layer in its evidence. A pattern that lasts to the end of the run is a
    warning; one that was there at initialisation and went away is info.

    Example
    -------
    >>> recs = [{"step": s, "layers": {"fc.1": {"type": "ReLU", "act_mean": 0.0, "act_std": 0.0,
    ...          "dead_fraction": 0.9}}} for s in (1, 11, 21)]
    >>> [(f.id, f.layer, f.severity) for f in monitor_findings(recs)]
    [('dead_relu', 'fc.1', 'warning')]
    """
    if not records:
        return []
    found: list[Finding] = []
    found += _activation_rule(
        records, "dead_fraction", DEAD_FRACTION, "dead_relu",
        lambda name, v: f"{v:.0%} of the units of {name} output zero for every example of a batch: they are "
                        "dead, get no gradient and will not learn again.",
        "Lower the learning rate, check bias_init (a negative bias kills ReLUs from the start), use He "
        "(kaiming) init, or switch to leaky_relu / elu, which keep a gradient below zero.")
    found += _activation_rule(
        records, "saturated_fraction", SATURATED_FRACTION, "saturated_activations",
        lambda name, v: f"{v:.0%} of the outputs of {name} are saturated (|tanh| > 0.99 or sigmoid outside "
                        "(0.01, 0.99)), where the local gradient is almost zero: those units barely learn.",
        "Scale the init down (xavier for tanh/sigmoid instead of a large init_std), normalise the inputs, "
        "add batch normalisation, or use relu-family units.")
    found += _collapse_rule(records)
    found += _gradient_depth_rules(records)
    found += _update_ratio_rules(records)
    return found


def _others(affected: dict[str, float], worst: str, fmt: str) -> str:
    rest = [f"{name} {format(value, fmt)}" for name, value in affected.items() if name != worst]
    if not rest:
        return ""
    shown = ", ".join(rest[:4]) + (f" and {len(rest) - 4} more" if len(rest) > 4 else "")
    return f" Also affected: {shown}."


def _activation_rule(records: list[dict[str, Any]], key: str, threshold: float, finding_id: str,
                     message: Callable[[str, float], str], advice: str) -> list[Finding]:
    ongoing: dict[str, float] = {}
    at_init: dict[str, tuple[float, int | None]] = {}
    first_step: dict[str, int] = {}
    for name in _layer_names(records, key):
        recs = [r for r in records if key in r["layers"].get(name, {})]
        values = [r["layers"][name][key] for r in recs]
        flags = [v >= threshold for v in values]
        kind = _persistence(flags)
        if kind == "ongoing":
            ongoing[name] = _median(values[-max(1, len(values) // 3):])
            first_step[name] = recs[flags.index(True)]["step"]
        elif kind == "at_init":
            at_init[name] = (values[0], _recovered_step(recs, flags))
    if ongoing:
        worst = max(ongoing, key=ongoing.__getitem__)
        return [Finding(finding_id, "warning", message(worst, ongoing[worst]) + _others(ongoing, worst, ".0%"),
                        advice, {key: ongoing[worst], "threshold": threshold, "layers": ongoing,
                                 "first_step": first_step[worst]},
                        layer=worst, step=first_step[worst])]
    if at_init:
        worst = max(at_init, key=lambda n: at_init[n][0])
        value, cleared = at_init[worst]
        text = message(worst, value) + f" This was so at initialisation and had cleared by step {cleared}."
        return [Finding(finding_id, "info", text, advice,
                        {key: value, "threshold": threshold, "layers": {n: v for n, (v, _) in at_init.items()},
                         "cleared_by_step": cleared}, layer=worst, step=records[0]["step"])]
    return []


def _collapse_rule(records: list[dict[str, Any]]) -> list[Finding]:
    names = _layer_names(records, "act_std")
    if len(names) < 3:
        return []
    flags, firsts = [], []
    for record in records:
        stds = [record["layers"].get(n, {}).get("act_std") for n in names]
        if any(s is None or not math.isfinite(s) for s in stds) or stds[0] <= 0:
            flags.append(False)
            firsts.append(None)
            continue
        # shrinking layer after layer (one exception allowed) down to below 1% of the first; the
        # layers after the smallest may grow again (later weights scale up to compensate) and the
        # signal is still lost in between
        low = min(range(len(stds)), key=stds.__getitem__)
        falls = sum(b < a for a, b in zip(stds[:low], stds[1:low + 1], strict=False))
        flags.append(low >= 2 and stds[low] < COLLAPSE_RATIO * stds[0] and falls >= low - 1)
        # the onset: the first layer whose std is under half that of the layer before it
        firsts.append(next((names[k] for k in range(1, len(stds)) if stds[k] < 0.5 * stds[k - 1]), names[low]))
    kind = _persistence(flags)
    if kind is None:
        return []
    index = len(flags) - 1 if kind == "ongoing" else 0
    while kind == "ongoing" and not flags[index]:
        index -= 1
    stds = [records[index]["layers"][n]["act_std"] for n in names]
    layer = firsts[index]
    low = min(range(len(stds)), key=stds.__getitem__)
    text = (f"The activation std shrinks layer after layer, from {stds[0]:.3g} in {names[0]} to {stds[low]:.3g} in "
            f"{names[low]} (shrinking from {layer} on): deep layers see almost nothing, and their "
            "gradients are as small.")
    if kind == "at_init":
        text += f" This was so at initialisation and had cleared by step {_recovered_step(records, flags)}."
    return [Finding(
        "activation_collapse", "warning" if kind == "ongoing" else "info", text,
        "The init is too small for this depth: use xavier (tanh/sigmoid) or kaiming (relu) init instead of a "
        "small init_std, or add batch normalisation.",
        {"act_std": dict(zip(names, stds, strict=False)), "ratio_smallest_to_first": stds[low] / stds[0],
         "threshold": COLLAPSE_RATIO, "step": records[index]["step"]},
        layer=layer, step=records[index]["step"])]


def _gradient_depth_rules(records: list[dict[str, Any]]) -> list[Finding]:
    """Compare the gradient arriving at the first monitored layer with the one at the last
    (RMS per element of the backpropagated signal; the weight gradients' RMS when the model
    has no monitored activations)."""
    key = "act_grad_rms"
    names = _layer_names(records, key)
    if len(names) < 2:
        key = "grad_rms"
        names = _layer_names(records, key)
    if len(names) < 2:
        return []
    first, last = names[0], names[-1]
    ratios = []
    for record in records:
        a, b = record["layers"].get(first, {}).get(key), record["layers"].get(last, {}).get(key)
        ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b > 0
        ratios.append(a / b if ok else float("nan"))
    found = []
    for finding_id, test, threshold in (("vanishing_gradients", lambda r: r < VANISHING_RATIO, VANISHING_RATIO),
                                        ("exploding_gradients", lambda r: r > EXPLODING_RATIO, EXPLODING_RATIO)):
        flags = [math.isfinite(r) and test(r) for r in ratios]
        kind = _persistence(flags)
        if kind is None:
            continue
        tail = ratios[-max(1, len(ratios) // 3):]
        ratio = _median(tail) if kind == "ongoing" else ratios[0]
        if finding_id == "vanishing_gradients":
            text = (f"The gradient reaching {first} is {ratio:.2g}x the one at {last} (RMS per element): it fades "
                    "on the way back, so the first layers barely learn.")
            advice = ("Use relu-family activations instead of sigmoid/tanh in deep stacks, xavier/kaiming init, "
                      "batch normalisation, or residual connections (model.kind: resnet).")
        else:
            text = (f"The gradient reaching {first} is {ratio:.2g}x the one at {last} (RMS per element): it grows "
                    "on the way back, so the first layers take huge, unstable steps.")
            advice = ("Scale the init down (xavier/kaiming instead of a large init_std), add batch normalisation, "
                      "clip gradients (optimizer.grad_clip) and lower the learning rate.")
        if kind == "at_init":
            text += f" This was so at initialisation and had cleared by step {_recovered_step(records, flags)}."
        found.append(Finding(
            finding_id, "warning" if kind == "ongoing" else "info", text, advice,
            {"gradient_ratio_first_to_last": ratio, "threshold": threshold, "first_layer": first,
             "last_layer": last, "measured_on": key, "samples": len(ratios)},
            layer=first, step=records[flags.index(True)]["step"]))
    return found


def _update_ratio_rules(records: list[dict[str, Any]]) -> list[Finding]:
    recs = _after_first_step(records)
    medians = {name: _median(_series(recs, name, "update_ratio")) for name in _layer_names(recs, "update_ratio")}
    medians = {name: value for name, value in medians.items() if math.isfinite(value)}
    found = []
    high = {name: v for name, v in medians.items() if v > UPDATE_RATIO_HIGH}
    low = {name: v for name, v in medians.items() if v < UPDATE_RATIO_LOW}
    if high:
        worst = max(high, key=high.__getitem__)
        found.append(Finding(
            "update_ratio_high", "warning",
            f"Each step changes the weights of {worst} by {high[worst]:.2g} of their size (median ||Δw||/||w||); "
            f"about 1e-3 is healthy. Steps this large bounce around instead of descending."
            + _others(high, worst, ".2g"),
            "Lower the learning rate (3-10x; babysit lr-find suggests one) or add warmup.",
            {"update_ratio_median": high[worst], "layers": high, "threshold": UPDATE_RATIO_HIGH, "healthy": 1e-3,
             "samples": len(recs)}, layer=worst))
    if low:
        worst = min(low, key=low.__getitem__)
        size = ("do not change at all" if low[worst] == 0 else
                f"change by only {low[worst]:.2g} of their size per step (median ||Δw||/||w||)")
        found.append(Finding(
            "update_ratio_low", "warning",
            f"The weights of {worst} {size}; about 1e-3 is healthy. At this pace the layer hardly learns."
            + _others(low, worst, ".2g"),
            "Raise the learning rate (3-10x; babysit lr-find suggests one); check that the layer gets a "
            "gradient at all (frozen weights, dead units, vanishing gradients).",
            {"update_ratio_median": low[worst], "layers": low, "threshold": UPDATE_RATIO_LOW, "healthy": 1e-3,
             "samples": len(recs)}, layer=worst))
    return found


__all__ = ["Monitor", "monitor_findings", "monitor_summary", "monitored_layers"]
