"""Study ``init``: the activations of a deep net at initialisation, layer by layer.

The claim (CS231n "Neural Networks 2", "Weight Initialization"; Glorot & Bengio 2010; He
et al. 2015): in a 10-layer tanh net, weights drawn from N(0, 0.01^2) shrink the
activations by a constant factor per layer until they collapse to zero (and the gradients
with them); N(0, 1) weights saturate every tanh unit at -1 or 1; Xavier's 1/fan_in-scaled
weights keep the activations alive through all ten layers. In a ReLU net, which zeroes
half its inputs, Xavier's scale halves the variance at every layer, and He et al.'s
(kaiming) factor of 2 keeps the standard deviation the same from the first layer to the
last.

``xavier`` here is Glorot & Bengio's scheme as published and as CS231n draws it,
N(0, 2 / (fan_in + fan_out)) without a gain, so the ReLU net shows what it was corrected
for; babysit's ``model.init: xavier`` multiplies it by the activation's gain (torch's
recommendation), which for square layers makes it kaiming. ``kaiming`` is babysit's:
N(0, 2 / fan_in) for ReLU, N(0, (5/3)^2 / fan_in) for tanh.

Nothing trains: one forward and backward pass of Gaussian inputs through each fresh net,
sampled by the monitors (:class:`babysit.checks.monitors.Monitor`, behind an optimizer with
learning rate 0), gives each layer's activation std, its saturated (tanh) or dead (ReLU)
fraction, and the gradient RMS arriving at it.
"""

from __future__ import annotations

from typing import Any

import torch

from babysit import nets
from babysit.checks.monitors import Monitor
from babysit.config import ModelSpec
from babysit.nets.init import initialize
from babysit.studies.common import Progress, StudyResult, seed_all
from babysit.studies.plots import panels_figure

# (label, babysit scheme, std for the normal scheme, nonlinearity whose gain the scheme uses)
SCHEMES: tuple[tuple[str, str, float | None, str | None], ...] = (
    ("small normal (std 0.01)", "normal", 0.01, None),
    ("large normal (std 1)", "normal", 1.0, None),
    ("xavier", "xavier", None, "linear"),  # Glorot & Bengio 2010 as published: no gain
    ("kaiming", "kaiming", None, None),  # He et al. 2015: the activation's gain
)
NETS = ("tanh", "relu")


def layer_statistics(model: torch.nn.Module, x: torch.Tensor, num_classes: int, seed: int) -> dict[str, list[float]]:
    """Per hidden layer (input to output) at initialisation: activation mean and std, the
    saturated or dead fraction, and the RMS of the gradient arriving at the activation,
    from one monitored forward/backward pass of ``x`` with random labels (no weight moves)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = Monitor(model, optimizer, every=1, histogram_every=10**9)
    labels = torch.randint(0, num_classes, (len(x),), generator=torch.Generator().manual_seed(seed))
    loss = torch.nn.functional.cross_entropy(model(x), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    monitor.observe_loss(loss)
    monitor.detach()
    layers = [entry for entry in monitor.records[0]["layers"].values() if "act_std" in entry]
    return {
        "act_mean": [e["act_mean"] for e in layers],
        "act_std": [e["act_std"] for e in layers],
        "saturated_fraction": [e.get("saturated_fraction") for e in layers],
        "dead_fraction": [e.get("dead_fraction") for e in layers],
        "act_grad_rms": [e.get("act_grad_rms") for e in layers],
    }


def init_study(quick: bool = False, progress: Progress | None = None, seed: int = 0) -> StudyResult:
    """Layer-by-layer activation statistics at init of a 10-layer tanh and a 10-layer relu
    MLP under four initialisations. Quick: width 256 and 500 inputs of 256 Gaussian
    features; full: CS231n's width 500 and 1,000 inputs."""
    say = progress or (lambda line: None)
    width, examples, depth, classes = (256, 500, 10, 10) if quick else (500, 1000, 10, 10)
    seed_all(seed)
    x = torch.randn(examples, width, generator=torch.Generator().manual_seed(seed))
    rows: list[dict[str, Any]] = []
    stats: dict[str, dict[str, Any]] = {}
    for activation in NETS:
        for label, scheme, std, nonlinearity in SCHEMES:
            seed_all(seed)
            model = nets.build(ModelSpec(hidden=[width] * depth, activation=activation), (width,), classes)
            initialize(model, scheme, std=std, nonlinearity=nonlinearity)
            layer = layer_statistics(model, x, classes, seed)
            stats[f"{activation} / {label}"] = layer
            first, last = layer["act_std"][0], layer["act_std"][-1]
            unit_fraction = layer["saturated_fraction"] if activation == "tanh" else layer["dead_fraction"]
            rows.append({
                "net": f"10-layer {activation}", "init": label, "std_first": first, "std_last": last,
                "std_ratio": last / first if first > 0 else float("nan"),
                "saturated_or_dead_last": unit_fraction[-1],
                "grad_rms_first": layer["act_grad_rms"][0], "grad_rms_last": layer["act_grad_rms"][-1],
            })
            say(f"init: {activation:<4} {label:<24} activation std layer 1 {first:.3g}, layer {depth} {last:.3g}")

    conclusion, checks = init_conclusion(rows, depth)
    return StudyResult(
        name="init",
        title="Initialisation: activation statistics layer by layer at init",
        claim="Small random weights collapse a deep tanh net's activations to zero, large ones saturate it, Xavier "
              "keeps it alive; kaiming keeps a deep ReLU net's activation std constant where Xavier halves its "
              "variance each layer (CS231n; Glorot & Bengio 2010; He et al. 2015).",
        setup=f"{depth} hidden layers of {width} units, {examples} inputs of N(0, 1) features, random labels; "
              "xavier without a gain (Glorot & Bengio as published); seed "
              f"{seed}; statistics from one monitored forward/backward pass at init.",
        columns=[("net", "net"), ("init", "init"), ("std_first", "act std layer 1"),
                 ("std_last", f"act std layer {depth}"), ("std_ratio", "last / first"),
                 ("saturated_or_dead_last", "saturated / dead, last layer"),
                 ("grad_rms_first", "grad RMS layer 1"), ("grad_rms_last", f"grad RMS layer {depth}")],
        rows=rows, conclusion=conclusion, figures=_figures(stats), data={"layers": stats}, checks=checks, quick=quick,
    )


def _figures(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def panel(net: str, key: str) -> dict[str, tuple[list[int], list[float]]]:
        return {label: (list(range(1, len(s[key]) + 1)), s[key]) for name, s in stats.items()
                if name.startswith(net) for label in [name.split(" / ", 1)[1]]}

    return {
        "init_activation_std": panels_figure({f"10-layer {net}": panel(net, "act_std") for net in NETS},
                                             "hidden layer", "activation std", log_y=True,
                                             title="activation std per layer at init"),
        "init_gradient_rms": panels_figure({f"10-layer {net}": panel(net, "act_grad_rms") for net in NETS},
                                           "hidden layer", "gradient RMS at the activation", log_y=True,
                                           title="backpropagated gradient per layer at init"),
    }


# what each claim needs of the numbers (the checks and the words use the same thresholds)
COLLAPSED = 1e-2  # the last layer's std below this fraction of the first's: collapsed
SATURATED = 0.5  # more than half the last layer's tanh units at |a| > 0.99: saturated
ALIVE = 0.1  # the last layer's std above this fraction of the first's: alive
CONSTANT = (0.5, 2.0)  # the last layer's std within this factor of the first's: constant


def init_conclusion(rows: list[dict[str, Any]], depth: int) -> tuple[list[str], dict[str, bool]]:
    """The conclusion lines and checks, computed from the table's rows only (``net``,
    ``init``, ``std_first``, ``std_last``, ``std_ratio``, ``saturated_or_dead_last``): each
    line says what the numbers show, and whether that is what the claim expects.

    Example
    -------
    >>> def r(net, init, first, last, unit):
    ...     return {"net": f"10-layer {net}", "init": init, "std_first": first, "std_last": last,
    ...             "std_ratio": last / first, "saturated_or_dead_last": unit}
    >>> rows = [r("tanh", "small normal", 0.16, 1e-8, 0.0), r("tanh", "large normal", 0.97, 0.97, 0.9),
    ...         r("tanh", "xavier", 0.6, 0.2, 0.0), r("relu", "xavier", 0.6, 0.03, 0.2), r("relu", "kaiming", 0.8, 0.9, 0.2)]
    >>> lines, checks = init_conclusion(rows, 10)
    >>> lines[0]
    '10-layer tanh, small normal init: the activation std falls from 0.16 at layer 1 to 1e-08 at layer 10 (6.2e-08x): the activations collapse.'
    >>> all(checks.values())
    True
    """
    def row(net: str, init: str) -> dict[str, Any]:
        return next(r for r in rows if r["net"] == f"10-layer {net}" and r["init"].startswith(init))

    tanh_small, tanh_large, tanh_xavier = row("tanh", "small"), row("tanh", "large"), row("tanh", "xavier")
    relu_xavier, relu_kaiming = row("relu", "xavier"), row("relu", "kaiming")
    saturated = tanh_large["saturated_or_dead_last"] or 0.0
    checks = {
        "small_init_collapses_tanh": tanh_small["std_ratio"] < COLLAPSED,
        "large_init_saturates_tanh": saturated > SATURATED,
        "xavier_keeps_tanh_alive": tanh_xavier["std_ratio"] > ALIVE,
        "kaiming_keeps_relu_std": CONSTANT[0] < relu_kaiming["std_ratio"] < CONSTANT[1],
        "xavier_shrinks_relu": relu_xavier["std_ratio"] < 0.5 * relu_kaiming["std_ratio"],
    }

    def std_path(r: dict[str, Any]) -> str:
        return (f"the activation std {'falls' if r['std_last'] < r['std_first'] else 'rises'} from {r['std_first']:.3g} "
                f"at layer 1 to {r['std_last']:.3g} at layer {depth} ({r['std_ratio']:.2g}x)")

    kaiming_words = ("constant, as He et al. 2015 derive" if checks["kaiming_keeps_relu_std"] else
                     f"not constant (outside {CONSTANT[0]:g}x..{CONSTANT[1]:g}x), unlike He et al. 2015's derivation")
    xavier_relu_words = (f"xavier (no gain) shrinks it to {relu_xavier['std_ratio']:.2g}x"
                         if checks["xavier_shrinks_relu"] else
                         f"xavier (no gain) ends at {relu_xavier['std_ratio']:.2g}x, not below half of kaiming's")
    conclusion = [
        f"10-layer tanh, small normal init: {std_path(tanh_small)}: "
        + ("the activations collapse." if checks["small_init_collapses_tanh"] else
           f"they do not collapse here (the claim expects below {COLLAPSED:g}x)."),
        f"10-layer tanh, large normal init: {saturated:.0%} of the last layer's units are saturated at -1 or 1"
        + (" (their gradient is near 0)." if checks["large_init_saturates_tanh"] else
           f": not the saturated net the claim expects (more than {SATURATED:.0%})."),
        f"10-layer tanh, xavier: {std_path(tanh_xavier)}: "
        + ("alive through every layer." if checks["xavier_keeps_tanh_alive"] else
           f"it fades (the claim expects above {ALIVE:g}x)."),
        f"10-layer relu, kaiming: {std_path(relu_kaiming)}: {kaiming_words}; {xavier_relu_words}.",
    ]
    if not all(checks.values()):
        conclusion.append(f"not reproduced here: {', '.join(k for k, v in checks.items() if not v)}.")
    return conclusion, checks
