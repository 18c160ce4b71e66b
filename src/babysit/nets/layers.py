"""Layers torch does not ship, and the small factories every builder shares.

- :class:`Maxout` (Goodfellow et al. 2013, "Maxout Networks"): a linear layer to
  ``out * pieces`` units, then the max over each group of ``pieces``.
- :class:`ChannelMaxout`: the same max over groups of channels, for conv nets (the conv
  before it produces ``C * pieces`` channels).
- :class:`SignUnit`: forward ``sign(x)``, backward the straight-through estimator with the
  gradient of hardtanh (Bengio, Leonard & Courville 2013, "Estimating or propagating
  gradients through stochastic neurons"; Hubara et al. 2016), so sign networks train.
- :class:`GaussianNoise`: additive noise in training only (input-noise regularisation,
  Bishop 1995, "Training with noise is equivalent to Tikhonov regularization").

Factories: :data:`ACTIVATIONS` (name -> factory(width)), :func:`norm_layer`,
:func:`parametrize` (weight / spectral normalisation via torch.nn.utils.parametrizations)
and :func:`conv_layout` (how an input shape maps to a 1-D or 2-D convolution). The walkers
:func:`weight_layers` and :func:`activation_modules` work on any ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrizations

from babysit.errors import BabysitError

# --------------------------------------------------------------------------- layers


class Maxout(nn.Module):
    """A maxout layer: ``h_j = max_k (W x + b)_{j, k}`` over ``pieces`` linear pieces.

    Goodfellow et al. 2013, "Maxout Networks". The pieces of unit ``j`` are the
    consecutive rows ``j * pieces ... j * pieces + pieces - 1`` of ``self.linear``. The
    layer is a Linear and its nonlinearity in one, so in an MLP it replaces the pair.

    Example
    -------
    >>> layer = Maxout(4, 3, pieces=2)
    >>> layer(torch.randn(5, 4)).shape
    torch.Size([5, 3])
    """

    def __init__(self, in_features: int, out_features: int, pieces: int = 2, bias: bool = True):
        super().__init__()
        if pieces < 1:
            raise ValueError(f"Maxout: pieces must be >= 1, got {pieces}")
        self.in_features = in_features
        self.out_features = out_features
        self.pieces = pieces
        self.linear = nn.Linear(in_features, out_features * pieces, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)  # (..., in) -> (..., out * pieces)
        return z.unflatten(-1, (self.out_features, self.pieces)).amax(-1)  # -> (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, pieces={self.pieces}"


class ChannelMaxout(nn.Module):
    """Max over consecutive groups of ``pieces`` channels: (B, C*k, ...) -> (B, C, ...).

    The convolutional form of maxout (Goodfellow et al. 2013, section 2): the conv before
    it computes ``C * pieces`` feature maps and each output channel keeps the largest of its
    group at every position.

    Example
    -------
    >>> ChannelMaxout(2)(torch.randn(3, 8, 5)).shape
    torch.Size([3, 4, 5])
    """

    def __init__(self, pieces: int = 2):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1] // self.pieces
        return x.unflatten(1, (channels, self.pieces)).amax(2)  # (B, C*k, *S) -> (B, C, *S)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class _SignStraightThrough(torch.autograd.Function):
    """sign(x) forward; backward passes the gradient where |x| <= 1 (d hardtanh / dx)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


class SignUnit(nn.Module):
    """Binary sign activation that still trains: forward ``sign(x)``, backward the
    straight-through estimator ``grad * 1{|x| <= 1}`` (the gradient of hardtanh).

    Bengio, Leonard & Courville 2013; Hubara et al. 2016 ("Binarized Neural Networks") use
    this exact estimator. The true derivative of sign is zero almost everywhere, which
    would stop all learning below this unit.

    Example
    -------
    >>> SignUnit()(torch.tensor([-2.0, 0.0, 0.5]))
    tensor([-1.,  0.,  1.])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignStraightThrough.apply(x)


class GaussianNoise(nn.Module):
    """Add N(0, std^2) noise in training mode; the identity in eval mode.

    Training with input noise acts like Tikhonov regularisation (Bishop 1995).

    Example
    -------
    >>> noise = GaussianNoise(0.1).eval()
    >>> x = torch.ones(2, 3)
    >>> bool(torch.equal(noise(x), x))
    True
    """

    def __init__(self, std: float):
        super().__init__()
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std == 0.0:
            return x
        return x + self.std * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"std={self.std}"


# --------------------------------------------------------------------------- activations

# name -> factory(width). Width is the number of features / channels the nonlinearity sees:
# PReLU learns one slope per channel (He et al. 2015); maxout builds a width -> width maxout
# layer with 2 pieces. The builders make maxout themselves (with model.maxout_pieces), since
# there it replaces the Linear / widens the conv in front of it.
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "sigmoid": lambda width: nn.Sigmoid(),
    "tanh": lambda width: nn.Tanh(),
    "relu": lambda width: nn.ReLU(),
    "leaky_relu": lambda width: nn.LeakyReLU(0.01),
    "prelu": lambda width: nn.PReLU(num_parameters=width),
    "elu": lambda width: nn.ELU(),
    "maxout": lambda width: Maxout(width, width, pieces=2),
    "sign": lambda width: SignUnit(),
}

# What activation_modules looks for: ours plus torch's elementwise nonlinearities, so the
# walker also works on models written by hand.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    Maxout, ChannelMaxout, SignUnit,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)  # fmt: skip

WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)  # fmt: skip


def activation(name: str, width: int) -> nn.Module:
    """The nonlinearity called ``name`` for ``width`` features or channels.

    Example
    -------
    >>> activation("prelu", 8).weight.shape
    torch.Size([8])
    """
    if name not in ACTIVATIONS:
        raise BabysitError(
            f"model.activation: '{name}' is unknown; available: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name](width)


def activation_modules(model: nn.Module) -> list[nn.Module]:
    """The hidden nonlinearity modules of ``model`` in registration (= forward) order.

    Forward hooks on these see the hidden activations (for activity regularisation and the
    dead-ReLU / saturation monitors). Maxout layers count: their output is the activation.
    Nonlinearities called as functions inside ``forward`` (``x.relu()``) are invisible here.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> activation_modules(net)
    [Tanh()]
    """
    return [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear / Conv modules of ``model`` in registration order (a Maxout's Linear included).

    These are the layers that init schemes, the max-norm constraint and the per-layer
    monitors act on.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> [tuple(layer.weight.shape) for layer in weight_layers(net)]
    [(4, 2), (1, 4)]
    """
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYER_TYPES)]


# --------------------------------------------------------------------------- normalisation


def _divisors(n: int) -> str:
    found = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")


def norm_layer(norm: str, width: int, dims: int, groups: int, where: str) -> nn.Module | None:
    """The normalisation module that follows a layer of ``width`` features/channels.

    ``dims`` is 0 for an MLP's (B, width) features, 1 or 2 for (B, C, L) / (B, C, H, W)
    feature maps. ``batch`` is BatchNorm (Ioffe & Szegedy 2015); ``layer`` is LayerNorm
    (Ba et al. 2016) on features and GroupNorm(1, C) on feature maps (normalising over
    channels and positions, as LayerNorm does for images); ``group`` is GroupNorm (Wu & He
    2018). ``weight`` and ``spectral`` reparametrise the weights instead (see
    :func:`parametrize`), so they and ``none`` return None.

    Example
    -------
    >>> norm_layer("group", 8, dims=1, groups=4, where="conv stage 1").num_groups
    4
    """
    if norm in ("none", "weight", "spectral"):
        return None
    if norm == "batch":
        return nn.BatchNorm1d(width) if dims <= 1 else nn.BatchNorm2d(width)
    if norm == "layer":
        return nn.LayerNorm(width) if dims == 0 else nn.GroupNorm(1, width)
    if norm == "group":
        if width % groups:
            raise BabysitError(
                f"model.groups: {groups} does not divide the {width} channels of {where}; "
                f"use a divisor of {width} ({_divisors(width)}) or change the widths"
            )
        return nn.GroupNorm(groups, width)
    raise BabysitError(
        f"model.norm: '{norm}' is unknown; available: none, batch, layer, group, weight, spectral"
    )


@torch.no_grad()
def scale_branch_end(module: nn.Module, factor: float) -> None:
    """Multiply what ``module`` (a residual branch's last weighted layer or norm) outputs at
    initialisation by ``factor``: a norm's affine weight, else the layer's weight (under weight
    or spectral normalisation, its learned magnitude ``original0``; spectral: the weight itself
    is renormalised, so the bias only) and bias. See :func:`babysit.nets.build`.

    Example
    -------
    >>> layer = nn.Linear(3, 2)
    >>> before = layer.weight.clone()
    >>> scale_branch_end(layer, 0.5)
    >>> torch.allclose(layer.weight, 0.5 * before)
    True
    """
    if isinstance(module, Maxout):
        module = module.linear
    weighted = getattr(module, "parametrizations", None)
    if weighted is not None and "weight" in weighted:
        magnitude = getattr(weighted.weight, "original0", None)  # weight norm's g; spectral norm has none
        if magnitude is not None:
            magnitude.mul_(factor)
    elif getattr(module, "weight", None) is not None:
        module.weight.mul_(factor)
    if getattr(module, "bias", None) is not None:
        module.bias.mul_(factor)


def parametrize(layer: nn.Module, norm: str) -> nn.Module:
    """Apply weight normalisation (Salimans & Kingma 2016) or spectral normalisation
    (Miyato et al. 2018) to ``layer``'s weight when ``norm`` asks for it; else return it as is.

    Uses torch.nn.utils.parametrizations, so ``layer.weight`` stays the effective weight
    and the learned tensors live under ``layer.parametrizations.weight``.

    Example
    -------
    >>> layer = parametrize(nn.Linear(3, 2), "weight")
    >>> sorted(n for n, _ in layer.named_parameters())
    ['bias', 'parametrizations.weight.original0', 'parametrizations.weight.original1']
    """
    if isinstance(layer, Maxout):
        parametrize(layer.linear, norm)
    elif norm == "weight":
        parametrizations.weight_norm(layer)
    elif norm == "spectral":
        parametrizations.spectral_norm(layer)
    return layer


# --------------------------------------------------------------------------- conv layout


def conv_layout(input_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """(C, *spatial) a conv net sees for an example of ``input_shape``.

    (L,) -> (1, L); (C, H, W) -> itself; a 2-tuple is ambiguous: (a, b) with a < b and
    a <= 16 is read as (C, L), a multichannel signal (few channels, a longer length);
    anything else, e.g. (8, 8) or (28, 28), as a one-channel (H, W) image -> (1, H, W).

    Example
    -------
    >>> conv_layout((40,), "cnn"), conv_layout((3, 100), "cnn"), conv_layout((8, 8), "cnn")
    ((1, 40), (3, 100), (1, 8, 8))
    """
    if len(input_shape) == 1:
        return (1, *input_shape)
    if len(input_shape) == 2:
        a, b = input_shape
        return (a, b) if a < b and a <= 16 else (1, a, b)
    if len(input_shape) == 3:
        return tuple(input_shape)
    raise BabysitError(
        f"model.kind: '{kind}' takes examples shaped (L,), (C, L), (H, W) or (C, H, W); "
        f"the data has {tuple(input_shape)}"
    )


CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}


def dry_run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on ``x`` in eval mode without gradients (to read output sizes at build
    time) and leave it in training mode: eval keeps BatchNorm's running statistics and
    spectral norm's power iteration untouched, and draws no dropout randomness."""
    module.eval()
    with torch.no_grad():
        y = module(x)
    module.train()
    return y


def downsample_factors(spatial: tuple[int, ...]) -> tuple[int, ...]:
    """2 along each spatial dimension that is at least 2 long, else 1 (never below 1 pixel)."""
    return tuple(2 if size >= 2 else 1 for size in spatial)


__all__ = [
    "ACTIVATIONS", "ChannelMaxout", "GaussianNoise", "Maxout", "SignUnit", "activation",
    "activation_modules", "conv_layout", "norm_layer", "parametrize", "scale_branch_end", "weight_layers",
]  # fmt: skip
