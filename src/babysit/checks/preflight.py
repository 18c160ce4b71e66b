"""Preflight: the checks CS231n asks for before the first training step, done by machine.

Reference: CS231n, "Neural Networks Part 3: Learning and Evaluation", section
"Gradient checks" and "Before learning: sanity checks Tips/Tricks" (Karpathy), and
"Neural Networks Part 2: Setting up the Data" for preprocessing and initialisation.
Each check is one small function below with its threshold next to its reference:

- ``inputs_not_normalized``: feature means far from 0 or scales far from 1.
- ``symmetric_init``: every unit of a layer starts identical (zero / constant init).
- ``initial_loss_off``: the loss at init against the loss of label-blind outputs
  (ln C for softmax over C classes, E[y^2] for MSE), with a documented tolerance.
- ``batch_mixing``: in eval mode example i's loss must depend on input i only.
- ``gradient_check_failed``: analytic gradients against centred finite differences in
  float64, ~10 entries per layer, kinks discounted; the culprit layer is named.
- ``cannot_overfit_tiny_subset``: a copy must memorise ~20 examples.

The model comes back untouched: every check works on a ``copy.deepcopy`` (weights, mode
and hooks of the caller's model are never changed) and the global RNG state is restored.

Example
-------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
>>> x = torch.randn(64, 4)
>>> y = x[:, :3].argmax(1)  # labels the inputs determine
>>> [f.id for f in preflight(net, nn.CrossEntropyLoss(), (x, y))]
[]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize as torch_parametrize

from babysit.checks.findings import MODEL_PREFLIGHT_IDS, Finding, sort_findings
from babysit.nets.layers import GaussianNoise, SignUnit
from babysit.nets.perceptron import Perceptron
from babysit.optim import losses as babysit_losses

ALL: tuple[str, ...] = MODEL_PREFLIGHT_IDS  # every check of the model, in the order they run

MAX_EXAMPLES = 512  # examples preflight looks at (statistics, initial loss)
MAX_BATCHES = 4  # batches taken from an iterable ``data``


@dataclass
class _Context:
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor
    task: str
    num_classes: int | None
    loss_name: str | None
    optimizer_factory: Callable | None
    seed: int

    @property
    def classification(self) -> bool:
        return self.task == "classification" and not torch.is_floating_point(self.y)


# --------------------------------------------------------------------------- helpers


def _gather(data) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a tensor pair, a babysit ``Split`` or the first few batches of an iterable."""
    if hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    else:
        xs, ys, count = [], [], 0
        for index, (xb, yb) in enumerate(data):
            xs.append(xb)
            ys.append(yb)
            count += len(xb)
            if index + 1 >= MAX_BATCHES or count >= MAX_EXAMPLES:
                break
        if not xs:
            raise ValueError("preflight: data yielded no batches")
        x, y = torch.cat(xs), torch.cat(ys)
    if len(x) != len(y):
        raise ValueError(f"preflight: data has {len(x)} inputs but {len(y)} targets")
    if len(x) < 2:
        raise ValueError(f"preflight: data needs at least 2 examples, got {len(x)}")
    return x[:MAX_EXAMPLES], y[:MAX_EXAMPLES]


def _infer_loss_name(loss_fn) -> str | None:
    """The babysit loss name of ``loss_fn`` (``cross_entropy``, ``nll``, ``mse``, ``bce``, ...), or None."""
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return "cross_entropy"
    if isinstance(loss_fn, babysit_losses.NLLFromLogits):
        return "nll"
    if isinstance(loss_fn, (babysit_losses.BinaryBCE, babysit_losses.OneVsRestBCE, nn.BCEWithLogitsLoss)):
        return "bce"
    if isinstance(loss_fn, babysit_losses.MulticlassHinge):
        return "hinge"
    if isinstance(loss_fn, babysit_losses.PerToken):
        return _infer_loss_name(loss_fn.loss)
    error = getattr(loss_fn, "error", loss_fn)  # Regression / OneHotRegression wrap the error
    if isinstance(error, nn.MSELoss):
        return "mse"
    if isinstance(error, nn.L1Loss):
        return "mae"
    return None


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _forward_order(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the modules of ``model`` in the order their forward first ran on ``x``."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        def hook(_module, _inputs, _output, name=name):
            if name not in order:
                order.append(name)
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _own_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _without_regularisation(model: nn.Module) -> nn.Module:
    """``model`` (a copy) in training mode with dropout, input noise and spectral norm off, in place.

    Spectral normalisation caps every layer's Lipschitz constant at 1, a regulariser that
    bounds the logits. Its parametrization is swapped for the identity after freezing the
    current normalised weight into ``original``, so the outputs at init are unchanged.
    (``remove_parametrizations`` would edit the parametrized class, which a deepcopy shares
    with the caller's model.) Weight normalisation is only a reparametrisation and stays.
    """
    for module in list(model.modules()):
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        elif isinstance(module, GaussianNoise):
            module.std = 0.0
        if not torch_parametrize.is_parametrized(module):
            continue
        for name, chain in module.parametrizations.items():
            spectral = [i for i, p in enumerate(chain) if type(p).__name__ == "_SpectralNorm"]
            if spectral and len(chain) == 1 and hasattr(chain, "original"):
                with torch.no_grad():
                    chain.original.copy_(getattr(module, name))
                chain[spectral[0]] = nn.Identity()
    return model.train()


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# --------------------------------------------------------------------------- inputs_not_normalized

# CS231n "Setting up the data": zero-centre every feature and scale it to unit variance.
# A feature is off when its mean is more than MEAN_MAX from 0, or its std (if it varies at
# all: constant border pixels are harmless) is outside [STD_MIN, STD_MAX]. Pixels in [0, 1]
# (mean ~0.1-0.5, std ~0.3) and spirals in [-1, 1] pass; raw 0-255 pixels or x*100+50 fail.
MEAN_MAX = 1.0
STD_MIN, STD_MAX = 0.1, 10.0
OFF_FRACTION = 0.1  # report when more than 10% of the features are off
# Pixels share one unit, and the usual image normalisation is one mean and std for all of
# them (per channel: torchvision's Normalize, pytorch/examples' MNIST): each pixel's own
# mean and std then stay within a few global stds of 0 and 1 (digits: means up to 1.2,
# stds up to 1.1; MNIST: means up to 2.3), while the global mean and std are 0 and 1. Such
# inputs are judged globally: images (N, C, H, W) per channel, and any inputs whose features
# all stay within GLOBAL_SPREAD.
GLOBAL_SPREAD = 3.0


def _globally_normalized(x: Tensor) -> bool:
    """Whether ``x`` (N, *shape) is normalised as a whole: images per channel (N, C, H, W),
    other inputs across every feature, with no feature beyond :data:`GLOBAL_SPREAD`."""
    groups = x.transpose(0, 1).flatten(1) if x.dim() == 4 else x.flatten(1).reshape(1, -1)
    for values in groups:
        mean, std = values.mean().item(), values.std(unbiased=False).item()
        if abs(mean) > MEAN_MAX or not STD_MIN <= std <= STD_MAX:
            return False
    if x.dim() == 4:
        return True
    flat = x.flatten(1)
    return bool(flat.mean(0).abs().max() <= GLOBAL_SPREAD and flat.std(0, unbiased=False).max() <= GLOBAL_SPREAD)


def check_inputs_not_normalized(ctx: _Context) -> list[Finding]:
    if not torch.is_floating_point(ctx.x):
        return []  # token ids or other integer inputs: nothing to standardise
    x = ctx.x.detach().double().flatten(1)  # (N, *shape) -> (N, D)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(0).sum())
        return [Finding(
            "inputs_not_normalized", "error",
            f"{bad} of {x.shape[1]} input features contain NaN or infinity.",
            "Clean the data (drop or impute missing values) before training.",
            {"nonfinite_features": bad, "features": x.shape[1]},
        )]
    mean, std = x.mean(0), x.std(0, unbiased=False)
    varies = std > 1e-8
    off = (mean.abs() > MEAN_MAX) | (varies & ((std < STD_MIN) | (std > STD_MAX)))
    fraction = off.double().mean().item()
    if fraction <= OFF_FRACTION or _globally_normalized(ctx.x.detach().double()):
        return []
    return [Finding(
        "inputs_not_normalized", "warning",
        f"{off.sum().item()} of {x.shape[1]} input features ({fraction:.0%}) are far from zero "
        f"mean and unit scale: feature means go up to {_fmt(mean.abs().max().item())} and stds "
        f"range from {_fmt(std[varies].min().item() if varies.any() else 0.0)} to "
        f"{_fmt(std.max().item())} (want |mean| <= {MEAN_MAX} and std in [{STD_MIN}, {STD_MAX}]).",
        "Standardise the inputs (data.preprocess: [standardize]): subtract each feature's "
        "training mean and divide by its std, so the first layer's units start in their useful range.",
        {
            "off_fraction": fraction, "features": x.shape[1],
            "max_abs_mean": mean.abs().max().item(), "mean_of_means": mean.mean().item(),
            "min_std": std[varies].min().item() if varies.any() else 0.0, "max_std": std.max().item(),
        },
    )]


# --------------------------------------------------------------------------- symmetric_init

# CS231n "Weight initialization, pitfall: all zero initialization": units that start with
# the same incoming weights (and bias) compute the same output and receive the same update,
# so the layer behaves like a single unit. Rows are "identical" when they differ by at most
# SYMMETRY_TOL relative to the largest weight (exact copies in practice). The output layer
# is exempt: its units are told apart by their different targets (zero-init heads are common).
SYMMETRY_TOL = 1e-6


def _unit_rows(module: nn.Module) -> Tensor | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() < 2 or weight.shape[0] < 2:
        return None
    rows = weight.detach().flatten(1)  # (out, in * kernel)
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor) and bias.shape == (weight.shape[0],):
        rows = torch.cat([rows, bias.detach().unsqueeze(1)], 1)
    return rows


def check_symmetric_init(ctx: _Context) -> list[Finding]:
    model = copy.deepcopy(ctx.model).eval()
    order = _forward_order(model, ctx.x[:2].to(_device(model)))
    modules = dict(model.named_modules())
    layers = [n for n in order if "parametrizations" not in n and _unit_rows(modules[n]) is not None]
    findings = []
    for name in layers[:-1]:  # the last weight layer run is the output layer
        rows = _unit_rows(modules[name])
        spread = (rows - rows[0]).abs().max().item()
        scale = rows.abs().max().item()
        if spread <= SYMMETRY_TOL * max(scale, 1e-12):
            value = "zero" if scale == 0 else f"the same values (largest {_fmt(scale)})"
            findings.append(Finding(
                "symmetric_init", "error",
                f"All {rows.shape[0]} units of layer '{name}' start with {value}: they compute "
                "the same thing and get the same gradient, so the layer acts like one unit.",
                "Initialise weights randomly (model.init: kaiming for ReLU, xavier for tanh) "
                "instead of zeros or a constant, to break the symmetry.",
                {"units": rows.shape[0], "max_row_difference": spread, "max_abs_weight": scale},
                layer=name,
            ))
    return findings


# --------------------------------------------------------------------------- initial_loss_off

# CS231n "Look for correct loss at chance performance": with small weights the softmax
# loss over C classes should start at ln C (2.302 for 10 classes). A network whose outputs
# do not yet depend on the labels has E[loss] >= ln C (Jensen), equal to ln C at zero
# logits and growing with the logit scale: for i.i.d. N(0, s^2) logits it is
# E[logsumexp(s z)] ~ ln C + s^2/2 for small s. He/Kaiming init (babysit gives the output
# layer the ReLU gain too) gives logits of std ~1.4-2 in plain nets, and residual nets
# without normalisation double the variance at every block (std up to ~5 for three
# blocks), so we allow logits up to LOGIT_STD_MAX = 6 and flag a loss above E[CE] at that
# scale (9.46 for C = 10, 5.09 for C = 3, 3.31 for C = 2). A std-1 normal init or a x100
# output scale lands in the hundreds. Below LOW_FRACTION * ln C the untrained net already
# "knows" the labels (a leak, or a trained model), which we only note. The loss is taken
# in training mode with dropout off, as the first step sees it (batch norm normalises).
# MSE: label-blind outputs f give E[(f - y)^2] = E[y^2] + E[f^2], so the allowance is
# E[y^2] + LOGIT_STD_MAX^2. BCE: ln 2 per logit, same scale allowance. Hinge and MAE have
# no closed form at non-zero scale and are skipped. Softmax applied inside the model is
# caught separately: its outputs are probabilities and the loss sits at ln C by accident.
LOGIT_STD_MAX = 6.0
LOW_FRACTION = 0.5
_MC_SAMPLES = 4096


def _label_blind_loss(name: str, classes: int, std: float) -> float:
    """E[loss] for i.i.d. N(0, std^2) outputs unrelated to the labels (Monte Carlo, fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    z = std * torch.randn(_MC_SAMPLES, classes, generator=gen, dtype=torch.float64)
    if name in ("cross_entropy", "nll"):
        return torch.logsumexp(z, 1).mean().item()  # E[lse(z) - z_y], E[z_y] = 0
    return F.softplus(z).mean().item()  # bce: E[softplus(-z)] = E[softplus(z)] by symmetry


def _probability_outputs(out: Tensor) -> bool:
    """Rows that are already a probability distribution (softmax applied inside the model)."""
    if out.dim() != 2 or out.shape[1] < 2:
        return False
    return bool((out >= 0).all() and (out <= 1).all() and ((out.sum(1) - 1).abs() < 1e-3).all())


def _fan_in_scaled(model: nn.Module) -> bool:
    """Whether every weight matrix / kernel has the size a fan-in-scaled init gives it (std
    within 3x of 1/sqrt(fan_in) either way: kaiming, xavier and torch's default all do)."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
               and isinstance(getattr(m, "weight", None), Tensor) and m.weight.numel() > 1]
    if not weights:
        return False
    for w in weights:
        ratio = w.detach().float().std().item() * math.sqrt(w[0].numel())  # std x sqrt(fan_in)
        if not 1 / 3 <= ratio <= 3:
            return False
    return True


def _too_large_advice(model: nn.Module) -> str:
    """What to change when the outputs start too large: the init when it is not scaled to the
    layers' fan-in, else the architecture (a user with kaiming already is not told to use it)."""
    if _fan_in_scaled(model):
        return ("The weights already have a fan-in-scaled init (kaiming / xavier size), so the outputs grow in "
                "the architecture: a deep residual stack adds its branches up (scale each branch's last layer "
                "down, about 1/L for L branches, or start its last norm's weight small, as babysit's own "
                "mlp/resnet/gpt do), or an output layer or factor scales them; check that inputs are standardised.")
    return ("Use a scaled initialisation (model.init: kaiming or xavier instead of a fixed init_std), check that "
            "inputs are standardised, and that the outputs are not scaled.")


def check_initial_loss_off(ctx: _Context) -> list[Finding]:
    model = _without_regularisation(copy.deepcopy(ctx.model))  # train mode, dropout off
    device = _device(model)
    with torch.no_grad():
        out = model(ctx.x.to(device))
        loss = float(ctx.loss_fn(out, ctx.y.to(device)))
    name = ctx.loss_name
    if not math.isfinite(loss):
        return [Finding(
            "initial_loss_off", "error",
            f"The loss at initialisation is {loss}: the very first forward pass is not finite.",
            "Look for log(0), division by zero or overflowing inputs; check the data for NaN.",
            {"initial_loss": str(loss)},
        )]
    evidence: dict = {"initial_loss": loss, "loss": name}
    if name in ("cross_entropy", "nll", "bce") and ctx.classification:
        classes = ctx.num_classes or (out.shape[-1] if out.shape[-1] > 1 else 2)
        per_output = name == "bce"
        expected = math.log(2.0) if per_output else math.log(classes)
        high = _label_blind_loss(name, 1 if per_output else classes, LOGIT_STD_MAX)
        evidence.update(expected=expected, upper_tolerance=high, classes=classes,
                        output_std=out.float().std().item())
        if name != "bce" and _probability_outputs(out):
            floor = math.log(classes - 1 + math.e) - 1  # CE of the one-hot "logits" 1, 0, ..., 0
            evidence.update(lowest_reachable_loss=floor)
            return [Finding(
                "initial_loss_off", "error",
                f"The model's outputs are already probabilities (each row is in [0, 1] and sums "
                f"to 1), but {name} applies its own softmax: the initial loss {loss:.3f} sits at "
                f"ln {classes} = {expected:.3f} only by accident, and the loss can never go below "
                f"{floor:.3f}.",
                "Remove the softmax at the end of the model and give the loss raw scores (logits); "
                "apply softmax only to read off probabilities.",
                evidence,
            )]
        what = "ln 2 per output" if per_output else f"ln {classes} = {expected:.3f}"
    elif name == "mse":
        target = ctx.y.to(device).double()
        if ctx.classification:
            target = F.one_hot(ctx.y.to(device), out.shape[-1]).double()
        expected = target.pow(2).mean().item()  # loss of an all-zero output
        high = expected + LOGIT_STD_MAX**2
        evidence.update(expected=expected, upper_tolerance=high, output_std=out.float().std().item())
        what = f"E[y^2] = {expected:.3g}"
    else:
        return []  # hinge, mae, custom losses: no closed form to compare with
    if loss > high:
        return [Finding(
            "initial_loss_off", "warning" if loss < 2 * high else "error",
            f"The loss at initialisation is {loss:.3g}, but a freshly initialised network should "
            f"start near {what} (at most {high:.3g} for outputs of std {LOGIT_STD_MAX:g}); the "
            f"outputs have std {evidence['output_std']:.3g}, so the weights start too large.",
            _too_large_advice(ctx.model),
            evidence,
        )]
    if name != "mse" and loss < LOW_FRACTION * expected:
        return [Finding(
            "initial_loss_off", "info",
            f"The loss at initialisation is {loss:.3g}, far below chance ({what}): the untrained "
            "model already predicts the labels.",
            "If the model is not pre-trained, check that the labels do not leak into the inputs.",
            evidence,
        )]
    return []


# --------------------------------------------------------------------------- batch_mixing

# In eval mode every example must be processed on its own: d loss_i / d x_j = 0 for j != i.
# Batch-norm in eval mode uses running statistics and passes; a norm over the batch axis
# or a reshape that swaps the batch axis fails. Gradients across examples must be exactly
# zero; LEAK_TOL (relative to example i's own input gradient) only absorbs roundoff.
MIX_BATCH = 4
LEAK_TOL = 1e-6


def _example_losses(ctx: _Context, out: Tensor, y: Tensor, weights: Tensor) -> list[Tensor]:
    try:
        return [ctx.loss_fn(out[i : i + 1], y[i : i + 1]) for i in range(len(out))]
    except Exception:  # a loss that cannot take one example: use a random projection of the outputs
        return [(out[i] * weights[i]).sum() for i in range(len(out))]


def _first_mixing_module(model: nn.Module, x: Tensor, order: list[str]) -> str | None:
    """The first module (forward order) whose output for example 0 depends on another example."""
    outputs: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in order:
        if name == "":
            continue
        def hook(_module, _inputs, output, name=name):
            if isinstance(output, Tensor) and output.shape[:1] == x.shape[:1] and output.requires_grad:
                outputs.setdefault(name, output)
        handles.append(modules[name].register_forward_hook(hook))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    for name in order:
        out = outputs.get(name)
        if out is None:
            continue
        (grad,) = torch.autograd.grad(out[0].sum(), x, retain_graph=True, allow_unused=True)
        if grad is not None and grad[1:].abs().max() > LEAK_TOL * grad[0].abs().max().clamp_min(1e-30):
            return name
    return None


def check_batch_mixing(ctx: _Context) -> list[Finding]:
    if not torch.is_floating_point(ctx.x):
        return []
    model = copy.deepcopy(ctx.model).eval()
    device = _device(model)
    size = min(MIX_BATCH, len(ctx.x))
    x = ctx.x[:size].to(device).clone().requires_grad_(True)
    y = ctx.y[:size].to(device)
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(ctx.seed)).to(out)
    worst, pair = 0.0, (0, 0)
    for i, loss in enumerate(_example_losses(ctx, out, y, weights)):
        (grad,) = torch.autograd.grad(loss, x, retain_graph=True, allow_unused=True)
        if grad is None:
            continue
        grad = grad.flatten(1).abs().amax(1)  # (B,) largest input-gradient entry per example
        own = grad[i].item()
        others = torch.cat([grad[:i], grad[i + 1 :]])
        j = int(others.argmax())
        ratio = others[j].item() / max(own, 1e-30)
        if ratio > worst:
            worst, pair = ratio, (i, j if j < i else j + 1)
    if worst <= LEAK_TOL:
        return []
    order = _forward_order(model, x.detach())
    layer = _first_mixing_module(model, x, order)
    where = f" It starts at layer '{layer}'." if layer else ""
    return [Finding(
        "batch_mixing", "error",
        f"In eval mode the loss of example {pair[0]} changes with the input of example "
        f"{pair[1]} (gradient ratio {worst:.3g}, should be 0): the model mixes the examples "
        f"of a batch, so its predictions depend on what else is in the batch.{where}",
        "Look for a reshape/view/transpose that moves the batch axis, or a mean/sum/norm over "
        "dim 0; keep the batch axis first and reduce only over the other axes.",
        {"leak_ratio": worst, "example": pair[0], "leaks_from": pair[1], "batch": size},
        layer=layer,
    )]


# --------------------------------------------------------------------------- gradient_check_failed

# CS231n "Gradient checks": centred differences (f(w+h) - f(w-h)) / 2h in float64, relative
# error |a - n| / max(|a|, |n|) (floored at GRAD_ATOL so zero gradients compare absolutely).
# CS231n's scale: > 1e-2 the gradient is probably wrong, 1e-2..1e-4 uncomfortable, < 1e-4
# fine for objectives with kinks, < 1e-7 good. Kinks (ReLU, maxout, max-pool, abs) make a
# step straddle a non-differentiable point; there the one-sided differences (f(w+h) - f(w))/h
# and (f(w) - f(w-h))/h disagree and the analytic value is one of them. We therefore count
# only the error the kink cannot explain: max(0, |a - n| - |d+ - d-|). On smooth pieces
# |d+ - d-| ~ h |f''| is negligible. The differences of f are only resolved to a few ulps,
# so a further 4 * eps_float64 * |f| / h (about 2e-9 for f ~ 2, h = 1e-6) is roundoff, not error;
# this keeps entries whose gradient is exactly zero (a dead unit) from looking wrong.
GRAD_EPS = 1e-6
GRAD_ATOL = 1e-8
GRAD_WARN = 1e-4
GRAD_ERROR = 1e-2
GRAD_BATCH = 8
GRAD_ENTRIES = 10  # parameter entries sampled per layer
_FLOAT64_EPS = torch.finfo(torch.float64).eps


def _layer_errors(ctx: _Context) -> tuple[dict[str, float], list[str]]:
    model = copy.deepcopy(ctx.model).cpu().double().eval()  # eval: dropout off
    loss_fn = ctx.loss_fn
    if isinstance(loss_fn, nn.Module):  # its buffers (class weights) in float64 on the CPU too
        loss_fn = copy.deepcopy(loss_fn).cpu().double()
    x = ctx.x[:GRAD_BATCH].cpu()
    x = x.double() if torch.is_floating_point(x) else x
    y = ctx.y[:GRAD_BATCH].cpu()
    y = y.double() if torch.is_floating_point(y) else y
    order = _forward_order(model, x)
    modules = dict(model.named_modules())
    layers = [name for name in order if _own_parameters(modules[name])]
    layers += [name for name, m in modules.items() if name not in layers and _own_parameters(m)]

    def loss() -> float:
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    base = loss()
    gen = torch.Generator().manual_seed(ctx.seed)
    errors: dict[str, float] = {}
    for name in layers:
        params = _own_parameters(modules[name])
        sizes = torch.tensor([p.numel() for p in params])
        total = int(sizes.sum())
        picks = torch.randperm(total, generator=gen)[:GRAD_ENTRIES].tolist()
        offsets = torch.cumsum(sizes, 0).tolist()
        worst = 0.0
        for flat in picks:
            k = next(i for i, end in enumerate(offsets) if flat < end)
            index = flat - (offsets[k - 1] if k else 0)
            param = params[k]
            analytic = 0.0 if param.grad is None else param.grad.reshape(-1)[index].item()
            with torch.no_grad():
                entry = param.data.view(-1) if param.data.is_contiguous() else None
                if entry is None:
                    continue
                original = entry[index].item()
                entry[index] = original + GRAD_EPS
                plus = loss()
                entry[index] = original - GRAD_EPS
                minus = loss()
                entry[index] = original
            numeric = (plus - minus) / (2 * GRAD_EPS)
            kink = abs((plus - base) - (base - minus)) / GRAD_EPS  # |d+ - d-|
            roundoff = 4 * _FLOAT64_EPS * max(abs(plus), abs(minus), abs(base)) / GRAD_EPS
            excess = max(0.0, abs(analytic - numeric) - kink - roundoff)
            if not math.isfinite(excess):
                excess = math.inf
            worst = max(worst, excess / max(abs(analytic), abs(numeric), GRAD_ATOL))
        errors[name] = worst
    return errors, order


def check_gradient(ctx: _Context) -> list[Finding]:
    errors, order = _layer_errors(ctx)
    failing = [name for name, err in errors.items() if err > GRAD_WARN]
    if not failing:
        return []
    # A wrong backward corrupts the gradients of every layer before it (backprop runs
    # backwards), so the culprit is the failing layer closest to the output.
    ranked = [name for name in order if name in errors]
    culprit = max(failing, key=lambda n: ranked.index(n) if n in ranked else -1)
    after = [n for n in ranked if n in errors and ranked.index(n) > ranked.index(culprit)] if culprit in ranked else []
    between = f", or in an operation between it and '{after[0]}'" if after else ""
    err = errors[culprit]
    severity = "error" if err > GRAD_ERROR else "warning"
    note = ""
    if any(isinstance(m, SignUnit) for m in ctx.model.modules()):
        # The sign unit's backward is a straight-through estimator (Bengio et al. 2013) on
        # purpose: the true gradient of sign is zero almost everywhere. Expected, not a bug.
        severity = "info"
        note = " The model uses sign units, whose straight-through backward is not the true gradient by design."
    return [Finding(
        "gradient_check_failed", severity,
        f"The gradients of layer '{culprit}' do not match finite differences: worst relative "
        f"error {err:.2g} (CS231n: above 1e-2 is wrong, below 1e-4 is fine with kinks, below "
        f"1e-7 is good). {len(failing)} layer(s) fail; the fault is in '{culprit}'{between}, "
        f"since a wrong backward also spoils every layer before it.{note}",
        "Check the backward of custom autograd functions (compare with torch.autograd.gradcheck) "
        "and any in-place or non-differentiable operation in that layer's forward.",
        {"worst_relative_error": err, "per_layer": errors, "failing_layers": failing,
         "eps": GRAD_EPS, "entries_per_layer": GRAD_ENTRIES},
        layer=culprit,
    )]


# --------------------------------------------------------------------------- cannot_overfit_tiny_subset

# CS231n "Overfit a tiny subset of data": with regularisation off, a network must reach
# (near) zero loss on ~20 examples; if it cannot, the model, loss or data path is broken.
# Success: the loss falls below OVERFIT_FRACTION of its starting value (and every example
# is classified right) within OVERFIT_STEPS full-batch Adam steps at lr 1e-2. Healthy
# ReLU nets get there in 10-30 steps (the check stops as soon as they do); slow learners
# such as sigmoid resnets need a few hundred, hence the 500-step budget.
OVERFIT_EXAMPLES = 20
OVERFIT_WINDOWS = 4  # sequence targets (B, T): windows, each T predictions
OVERFIT_STEPS = 500
OVERFIT_LR = 1e-2
OVERFIT_FRACTION = 0.1


def _accuracy(ctx: _Context, out: Tensor, y: Tensor) -> float | None:
    if not ctx.classification:
        return None
    if y.dim() > 1:
        # next-token targets (B, T): the first positions of a window are predicted from one or
        # two characters, which several windows share with different successors, so no model
        # gets every token right; memorising is judged by the loss alone
        return None
    name = ctx.loss_name or "cross_entropy"
    return (babysit_losses.predict(out.detach(), name) == y).float().mean().item()


def check_cannot_overfit(ctx: _Context) -> list[Finding]:
    model = _without_regularisation(copy.deepcopy(ctx.model))
    device = _device(model)
    # a window of next-token targets (B, T) holds T predictions: OVERFIT_WINDOWS of them are already
    # hundreds of predictions to memorise (20 windows of a GPT took 42 s here, 4 windows 6 s)
    count = OVERFIT_WINDOWS if ctx.y.dim() > 1 else OVERFIT_EXAMPLES
    x, y = ctx.x[:count].to(device), ctx.y[:count].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return [Finding(
            "cannot_overfit_tiny_subset", "error",
            "The model has no trainable parameters (every parameter has requires_grad=False).",
            "Unfreeze the layers you mean to train.",
            {"trainable_parameters": 0},
        )]
    if ctx.optimizer_factory is not None:
        optimizer = ctx.optimizer_factory(params)
    else:
        optimizer = torch.optim.Adam(params, lr=OVERFIT_LR)
    first = last = accuracy = None
    steps = 0
    for steps in range(1, OVERFIT_STEPS + 1):  # noqa: B007 (steps is reported below)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = ctx.loss_fn(out, y)
        last = loss.item()
        first = last if first is None else first
        accuracy = _accuracy(ctx, out, y)
        if not math.isfinite(last):
            break
        if last <= OVERFIT_FRACTION * first and accuracy in (None, 1.0):
            return []
        if not loss.requires_grad:
            break  # nothing upstream of the loss can learn
        loss.backward()
        optimizer.step()
    acc = "" if accuracy is None else f" and {accuracy:.0%} of them classified right"
    evidence = {"examples": len(x), "steps": steps, "initial_loss": first, "final_loss": last,
                "final_accuracy": accuracy}
    if isinstance(ctx.model, Perceptron) and ctx.loss_name == "perceptron":
        # A perceptron is one layer of units on fixed features; from w = 0 its criterion starts at
        # 0 and reaches 0 again exactly when the examples are separated. Failing that, they are not
        # linearly separable in its feature space (Minsky & Papert 1969): a limit of the model, not
        # a bug in the code path, so a warning that names the remedy.
        return [Finding(
            "cannot_overfit_tiny_subset", "warning",
            f"The perceptron could not separate {len(x)} training examples in {steps} steps (the "
            f"perceptron criterion went from {first:.3g} to {last:.3g}{acc}): they are not linearly "
            "separable in its feature space, and on such data the perceptron rule never settles.",
            "Give it a richer fixed basis (model.basis: polynomial or fourier) or hidden layers "
            "(model.kind: mlp).",
            evidence,
        )]
    return [Finding(
        "cannot_overfit_tiny_subset", "error",
        f"Trained alone on {len(x)} examples with no regularisation, the model took its loss "
        f"only from {first:.3g} to {last:.3g} in {steps} steps{acc}; a working model memorises "
        f"them (loss below {OVERFIT_FRACTION:.0%} of the start).",
        "Something in the model, loss or data path is broken: look for detach()/no_grad, "
        "frozen layers, an output that ignores the input, a softmax before the loss, or "
        "targets that do not match the outputs.",
        evidence,
    )]


# --------------------------------------------------------------------------- entry point

CHECKS: dict[str, Callable[[_Context], list[Finding]]] = {
    "inputs_not_normalized": check_inputs_not_normalized,
    "symmetric_init": check_symmetric_init,
    "initial_loss_off": check_initial_loss_off,
    "batch_mixing": check_batch_mixing,
    "gradient_check_failed": check_gradient,
    "cannot_overfit_tiny_subset": check_cannot_overfit,
}


def preflight(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    *,
    task: str = "classification",
    num_classes: int | None = None,
    loss_name: str | None = None,
    optimizer_factory: Callable | None = None,
    seed: int = 0,
    checks: tuple[str, ...] = ALL,
) -> list[Finding]:
    """Run the preflight checks on ``model`` and return the findings, most severe first.

    Parameters
    ----------
    model : the network, left exactly as it was (the checks work on copies).
    loss_fn : ``loss_fn(outputs, targets) -> scalar`` batch mean, e.g. ``nn.CrossEntropyLoss()``.
    data : an ``(x, y)`` tensor pair, a babysit ``Split``, or an iterable of ``(x, y)``
        batches (the first few are used, up to 512 examples).
    task : ``classification`` (integer targets) or ``regression``.
    num_classes : classes for classification; default the model's output width.
    loss_name : babysit's name of the loss (``cross_entropy``, ``mse``, ...); inferred from
        ``loss_fn`` when None. Without one the initial-loss check is skipped.
    optimizer_factory : ``params -> optimizer`` for the overfit check (default Adam, lr 1e-2).
    seed : seeds the random choices (subsets, gradient-check entries).
    checks : which checks to run, by finding id (default all of :data:`ALL`).

    Returns
    -------
    list of :class:`~babysit.checks.findings.Finding`; empty for a healthy setup.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.randn(32, 4) * 100 + 50  # raw, unscaled features
    >>> [f.id for f in preflight(net, nn.CrossEntropyLoss(), (x, x[:, 0].gt(50).long()),
    ...                          checks=("inputs_not_normalized",))]
    ['inputs_not_normalized']
    """
    unknown = [name for name in checks if name not in CHECKS]
    if unknown:
        raise ValueError(f"preflight checks: unknown {unknown}; available: {', '.join(CHECKS)}")
    x, y = _gather(data)
    ctx = _Context(
        model=model, loss_fn=loss_fn, x=x.detach(), y=y.detach(), task=task,
        num_classes=num_classes, loss_name=loss_name or _infer_loss_name(loss_fn),
        optimizer_factory=optimizer_factory, seed=seed,
    )
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    findings: list[Finding] = []
    try:
        torch.manual_seed(seed)
        for name in checks:
            findings.extend(CHECKS[name](ctx))
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    return sort_findings(findings)


__all__ = ["ALL", "CHECKS", "preflight"]
