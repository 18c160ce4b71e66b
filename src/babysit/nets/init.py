"""Weight initialisation schemes, by name (``model.init``).

Every scheme draws a layer's weight from a distribution whose scale comes from the
layer's fan-in / fan-out and the gain of the network's nonlinearity:

- ``zeros``: all zero (symmetric: every unit learns the same thing; kept for teaching).
- ``normal``: N(0, std^2), std = ``model.init_std`` or 0.01 (CS231n's "small random numbers").
- ``uniform``: U(-a, a), a = ``model.init_std`` or 0.05.
- ``lecun``: N(0, 1/fan_in) (LeCun, Bottou, Orr & Mueller 1998, "Efficient BackProp",
  section 4.6). torch has no such initialiser; this is a plain, untruncated normal, so
  the variance is exactly 1/fan_in.
- ``xavier``: ``nn.init.xavier_normal_`` with the activation's gain (Glorot & Bengio 2010).
- ``kaiming``: ``nn.init.kaiming_normal_`` (fan_in) for relu / leaky_relu / prelu (He et
  al. 2015); for other nonlinearities N(0, gain^2 / fan_in) with that nonlinearity's gain.
- ``orthogonal``: ``nn.init.orthogonal_`` with the activation's gain (Saxe et al. 2014).

Biases are set to ``bias`` (``model.bias_init``). Weight- and spectral-normalised layers
are handled: the drawn weight is assigned through the parametrization (weight norm then
reproduces it exactly; spectral norm divides it by its top singular value, re-estimated
here so it is not stale).

Example
-------
>>> from torch import nn
>>> net = initialize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "kaiming")
>>> net[0].bias.abs().sum().item()
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize as torch_parametrize

from babysit.errors import BabysitError
from babysit.nets.layers import (
    ChannelMaxout,
    Maxout,
    SignUnit,
    activation_modules,
    weight_layers,
)

LEAKY_SLOPE = 0.01  # nn.LeakyReLU(0.01), as nets.ACTIVATIONS builds it
PRELU_SLOPE = 0.25  # nn.PReLU's initial slope

# ELU has no gain in torch. Following He et al. 2015's derivation, the gain g keeps the
# second moment through the unit: g^2 * E[elu(z)^2] = 1 for z ~ N(0, 1), with
# E[elu(z)^2] = 1/2 + E[(e^z - 1)^2; z < 0] = 1/2 + e^2 Phi(-2) - 2 e^(1/2) Phi(-1) + 1/2.


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


ELU_GAIN = 1.0 / math.sqrt(
    0.5 + math.exp(2.0) * _phi(-2.0) - 2.0 * math.exp(0.5) * _phi(-1.0) + 0.5
)


def gain(nonlinearity: str) -> float:
    """The init gain for a nonlinearity (torch's ``calculate_gain`` where it has one).

    sign and maxout get 1: sign(z)^2 = 1, and the max of two standard normals has second
    moment exactly 1. elu gets :data:`ELU_GAIN` (about 1.245, see above).

    Example
    -------
    >>> round(gain("relu"), 4), round(gain("tanh"), 4)
    (1.4142, 1.6667)
    """
    if nonlinearity in ("linear", "sigmoid", "tanh", "relu"):
        return nn.init.calculate_gain(nonlinearity)
    if nonlinearity == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
    if nonlinearity == "prelu":
        return nn.init.calculate_gain("leaky_relu", PRELU_SLOPE)
    if nonlinearity == "elu":
        return ELU_GAIN
    if nonlinearity in ("sign", "maxout"):
        return 1.0
    raise BabysitError(
        f"init: no gain for nonlinearity '{nonlinearity}'; known: linear, sigmoid, tanh, relu, "
        "leaky_relu, prelu, elu, sign, maxout"
    )


def fan_in(weight: torch.Tensor) -> int:
    """Inputs per output unit: in_features for Linear, in_channels/groups * kernel for Conv."""
    return weight.shape[1] * math.prod(weight.shape[2:])


# --------------------------------------------------------------------------- schemes
# Each scheme fills ``weight`` in place given (std from the spec or None, nonlinearity name).


def zeros(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    nn.init.zeros_(weight)


def normal(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    nn.init.normal_(weight, 0.0, 0.01 if std is None else std)


def uniform(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    a = 0.05 if std is None else std
    nn.init.uniform_(weight, -a, a)


def lecun(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in(weight)))


def xavier(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    nn.init.xavier_normal_(weight, gain=gain(nonlinearity))


def kaiming(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    if nonlinearity == "relu":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif nonlinearity in ("leaky_relu", "prelu"):
        slope = LEAKY_SLOPE if nonlinearity == "leaky_relu" else PRELU_SLOPE
        nn.init.kaiming_normal_(weight, a=slope, nonlinearity="leaky_relu")
    else:
        nn.init.normal_(weight, 0.0, gain(nonlinearity) / math.sqrt(fan_in(weight)))


def orthogonal(weight: torch.Tensor, std: float | None, nonlinearity: str) -> None:
    nn.init.orthogonal_(weight, gain=gain(nonlinearity))


SCHEMES: dict[str, Callable[[torch.Tensor, float | None, str], None]] = {
    "zeros": zeros,
    "normal": normal,
    "uniform": uniform,
    "lecun": lecun,
    "xavier": xavier,
    "kaiming": kaiming,
    "orthogonal": orthogonal,
}


# --------------------------------------------------------------------------- applying


def infer_nonlinearity(model: nn.Module) -> str:
    """The name of the first hidden nonlinearity in ``model`` ('linear' when there is none
    or it is not one babysit builds, e.g. GELU)."""
    names = [
        (Maxout, "maxout"), (ChannelMaxout, "maxout"), (SignUnit, "sign"), (nn.PReLU, "prelu"),
        (nn.LeakyReLU, "leaky_relu"), (nn.ReLU, "relu"), (nn.ELU, "elu"), (nn.Tanh, "tanh"),
        (nn.Sigmoid, "sigmoid"),
    ]  # fmt: skip
    for module in activation_modules(model):
        for kind, name in names:
            if isinstance(module, kind):
                return name
    return "linear"


def _assign_weight(layer: nn.Module, weight: torch.Tensor, scheme: str) -> None:
    """Copy ``weight`` into ``layer``, through its parametrization when it has one."""
    if not torch_parametrize.is_parametrized(layer, "weight"):
        with torch.no_grad():
            layer.weight.copy_(weight)
        return
    if scheme == "zeros":
        raise BabysitError(
            "model.init: 'zeros' cannot be used with model.norm: weight or spectral "
            "(both divide the weight by its norm, 0/0); pick another init or norm"
        )
    # right_inverse: weight norm stores (g = ||w|| per unit, v = w); spectral norm stores w.
    layer.weight = weight
    for p in layer.parametrizations.weight:
        if hasattr(p, "_power_method") and hasattr(p, "_reshape_weight_to_matrix"):
            # spectral norm: its u, v belong to the old weight; re-run the power iteration
            # (15 steps, as torch does at registration) so sigma is this weight's.
            original = layer.parametrizations.weight.original
            p._power_method(p._reshape_weight_to_matrix(original), 15)


def initialize(
    model: nn.Module,
    scheme: str = "kaiming",
    std: float | None = None,
    bias: float = 0.0,
    nonlinearity: str | None = None,
) -> nn.Module:
    """Initialise every Linear / Conv weight of ``model`` (Maxout's included) with ``scheme``
    and set every bias to ``bias``; returns ``model``.

    ``nonlinearity`` picks the gain for xavier / kaiming / orthogonal; by default it is read
    from the model's first activation module (``'linear'`` when it has none). Norm layers
    (BatchNorm, LayerNorm, GroupNorm) and PReLU slopes keep torch's defaults.

    Example
    -------
    >>> from torch import nn
    >>> layer = initialize(nn.Linear(300, 200), "lecun", bias=0.1)
    >>> round(layer.weight.std().item() * 300 ** 0.5, 1), round(layer.bias[0].item(), 6)
    (1.0, 0.1)
    """
    if scheme not in SCHEMES:
        raise BabysitError(f"model.init: '{scheme}' is unknown; available: {', '.join(SCHEMES)}")
    nonlinearity = nonlinearity or infer_nonlinearity(model)
    fill = SCHEMES[scheme]
    for layer in weight_layers(model):
        current = layer.weight
        weight = torch.empty(current.shape, dtype=current.dtype, device=current.device)
        fill(weight, std, nonlinearity)
        _assign_weight(layer, weight, scheme)
        if layer.bias is not None:
            nn.init.constant_(layer.bias, bias)
    return model
