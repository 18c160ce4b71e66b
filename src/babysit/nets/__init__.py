"""Networks from a spec: ``build(spec.model, input_shape, output_dim)``.

The registry :data:`BUILDERS` maps ``model.kind`` to a builder function (mlp.py, cnn.py,
resnet.py, perceptron.py, recurrent.py); :func:`build` builds the network and initialises it with
:func:`babysit.nets.init.initialize`. Extra layers torch lacks (Maxout, the sign unit,
Gaussian noise) live in layers.py; the walkers :func:`activation_modules` and
:func:`weight_layers` work on any ``nn.Module``.

Example
-------
>>> import torch
>>> from babysit.config import ModelSpec
>>> net = build(ModelSpec(kind="mlp", hidden=[32, 32]), (40,), 10)
>>> net(torch.randn(4, 40)).shape
torch.Size([4, 10])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError
from babysit.nets.autoencoder import build_autoencoder
from babysit.nets.cnn import build_cnn
from babysit.nets.gan import build_gan
from babysit.nets.gpt import build_gpt
from babysit.nets.init import SCHEMES, initialize
from babysit.nets.layers import (
    ACTIVATIONS,
    ChannelMaxout,
    GaussianNoise,
    Maxout,
    SignUnit,
    activation_modules,
    weight_layers,
)
from babysit.nets.mlp import build_mlp
from babysit.nets.perceptron import build_perceptron
from babysit.nets.recurrent import build_recurrent
from babysit.nets.resnet import build_resnet

BUILDERS: dict[str, Callable[[ModelSpec, tuple[int, ...], int], nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "resnet": build_resnet,
    "perceptron": build_perceptron,
    "rnn": build_recurrent,
    "gru": build_recurrent,
    "lstm": build_recurrent,
    "autoencoder": build_autoencoder,
    "gan": build_gan,
    "gpt": build_gpt,
}


def build(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """Build the network ``spec.kind`` for examples of ``input_shape`` and initialise it.

    The model maps x of shape (B, *input_shape) to (B, output_dim). It is built on the CPU
    in training mode; move it with ``.to(device)``. Seed torch first for identical builds.

    Example
    -------
    >>> import torch
    >>> from babysit.config import ModelSpec
    >>> net = build(ModelSpec(kind="cnn"), (40,), 10)  # MNIST-1D's ConvBase
    >>> net(torch.randn(2, 40)).shape
    torch.Size([2, 10])
    """
    builder = BUILDERS.get(spec.kind)
    if builder is None:
        raise BabysitError(
            f"model.kind: '{spec.kind}' is not available yet; available: {', '.join(BUILDERS)}"
        )
    input_shape = tuple(int(size) for size in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise BabysitError(
            f"data: examples must have a non-empty shape of positive sizes, got {input_shape}"
        )
    if output_dim < 1:
        raise BabysitError(
            f"data: the network needs at least one output, got output_dim={output_dim}"
        )
    model = builder(spec, input_shape, int(output_dim))
    if getattr(model, "initializes_itself", False):  # GPT: GPT-2's own init (nets/gpt.py)
        return model
    initialize(model, spec.init, spec.init_std, spec.bias_init, nonlinearity=spec.activation)
    if hasattr(model, "scale_residual_branches"):  # deep residual nets start near ln C (nets/mlp.py, resnet.py)
        model.scale_residual_branches()
    return model


__all__ = [
    "ACTIVATIONS", "BUILDERS", "SCHEMES", "ChannelMaxout", "GaussianNoise", "Maxout", "SignUnit",
    "activation_modules", "build", "initialize", "weight_layers",
]  # fmt: skip
