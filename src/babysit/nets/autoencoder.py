"""Autoencoder (``model.kind: autoencoder``): an encoder to a small code and a decoder back.

    x (B, *input_shape) -> encoder -> code (B, bottleneck) -> decoder -> x_hat (B, *input_shape)

The network is trained to reproduce its input (the runner makes the targets the inputs, and
the loss defaults to mse), so the ``model.bottleneck`` numbers of the code must keep what
matters about an example. With linear layers and mse the best such code spans the top
principal components (Baldi & Hornik 1989, "Neural networks and principal component
analysis"); hidden nonlinear layers let the code follow a curved manifold instead, which is
how it beats PCA at the same size (Hinton & Salakhutdinov 2006, "Reducing the dimensionality
of data with neural networks").

Two backbones (``model.backbone``):

- ``mlp``: flatten -> a hidden layer per width in ``model.hidden`` (Linear -> norm ->
  activation -> dropout, the MLP's layers) -> Linear to the code; the decoder mirrors it
  (Linear from the code -> the widths reversed -> Linear to every input value).
- ``cnn``: the CNN's conv stages (``model.channels``; 2-D stages halve the image with a
  max-pool, 1-D stages with stride 2) -> flatten -> Linear to the code; the decoder maps the
  code back to the last stage's feature maps and undoes each stage with a resize (nearest
  neighbour, to the encoder's size at that stage) and a 'same' convolution, then a last
  convolution to the input channels. Resize-then-convolve avoids the checkerboard artefacts
  of transposed convolutions (Odena, Dumoulin & Olah 2016, "Deconvolution and checkerboard
  artifacts").

The code and the reconstruction are linear (no activation): the data may be standardised
to any range. :class:`Encoder` and :class:`Decoder` are reused by the GAN (nets/gan.py).

Example
-------
>>> from babysit.config import ModelSpec
>>> net = build_autoencoder(ModelSpec(kind="autoencoder", hidden=[32], bottleneck=4), (1, 8, 8), 64)
>>> net(torch.randn(5, 1, 8, 8)).shape, net.encode(torch.randn(5, 1, 8, 8)).shape
(torch.Size([5, 1, 8, 8]), torch.Size([5, 4]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError
from babysit.nets.cnn import conv_stages
from babysit.nets.layers import CONV, activation, conv_layout, norm_layer, parametrize
from babysit.nets.mlp import HiddenLayer


class Encoder(nn.Module):
    """x (B, *input_shape) -> (B, out_features), by dense layers or conv stages (see module docstring)."""

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], out_features: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.convolutional = spec.backbone == "cnn"
        if self.convolutional:
            self.conv_shape = conv_layout(input_shape, spec.kind)  # (C, L) or (C, H, W)
            # self.shapes: the feature-map shape before each stage, then after the last
            self.features, self.shapes = conv_stages(spec, self.conv_shape)
            width = math.prod(self.shapes[-1])
        else:
            width = math.prod(input_shape)
            layers = []
            for index, hidden in enumerate(spec.hidden, start=1):
                layers.append(HiddenLayer(width, hidden, spec, index))
                width = hidden
            self.features = nn.Sequential(*layers)
        self.out = parametrize(nn.Linear(width, out_features), spec.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.convolutional:
            h = self.features(x.reshape(x.shape[0], *self.conv_shape))  # (B, C_last, *spatial_last)
        else:
            h = self.features(x.flatten(1))  # (B, D) -> (B, hidden[-1])
        return self.out(h.flatten(1))  # -> (B, out_features)


class Decoder(nn.Module):
    """z (B, in_features) -> (B, *output_shape): the mirror image of an :class:`Encoder` for
    examples of ``output_shape`` (see the module docstring)."""

    def __init__(self, spec: ModelSpec, output_shape: tuple[int, ...], in_features: int):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.convolutional = spec.backbone == "cnn"
        if self.convolutional:
            shapes = Encoder(spec, output_shape, 1).shapes  # the encoder's feature-map shapes, input first
            self.start_shape = shapes[-1]
            self.inp = parametrize(nn.Linear(in_features, math.prod(self.start_shape)), spec.norm)
            stages = []
            dims = len(shapes[0]) - 1
            # decoder stage k undoes encoder stage n + 1 - k (shapes s_n -> s_{n-1}, ..., s_2 -> s_1)
            for index, (before, after) in enumerate(zip(shapes[-2:0:-1], shapes[-1:1:-1], strict=True), start=1):
                # back to the size and channels that encoder stage had as its input
                channels = before[0]
                conv = CONV[dims](after[0], channels, 3, padding="same", bias=spec.norm != "batch")
                modules = [nn.Upsample(size=before[1:], mode="nearest"), parametrize(conv, spec.norm),
                           norm_layer(spec.norm, channels, dims=dims, groups=spec.groups, where=f"decoder stage {index}"),
                           activation("relu" if spec.activation == "maxout" else spec.activation, channels)]
                stages.append(nn.Sequential(*[m for m in modules if m is not None]))
            # undo the first stage: back to the input's size, then a linear conv to its channels
            self.features = nn.Sequential(*stages, nn.Upsample(size=shapes[0][1:], mode="nearest"))
            self.out = parametrize(CONV[dims](shapes[1][0], shapes[0][0], 3, padding="same"), spec.norm)
        else:
            widths = list(reversed(spec.hidden))
            width = in_features
            layers = []
            for index, hidden in enumerate(widths, start=1):
                layers.append(HiddenLayer(width, hidden, spec, index))
                width = hidden
            self.inp = nn.Identity()
            self.features = nn.Sequential(*layers)
            self.out = parametrize(nn.Linear(width, math.prod(output_shape)), spec.norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.convolutional:
            h = self.inp(z).reshape(z.shape[0], *self.start_shape)  # (B, code) -> (B, C_last, *spatial_last)
            h = self.out(self.features(h))  # -> (B, C, *spatial)
        else:
            h = self.out(self.features(z))  # (B, code) -> (B, D)
        return h.reshape(z.shape[0], *self.output_shape)


class Autoencoder(nn.Module):
    """Encoder -> code -> decoder; ``forward`` reconstructs, :meth:`encode` gives the code."""

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...]):
        super().__init__()
        self.encoder = Encoder(spec, input_shape, spec.bottleneck)
        self.decoder = Decoder(spec, input_shape, spec.bottleneck)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, *input_shape) -> (B, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, *input_shape) -> (B, *input_shape)


def build_autoencoder(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """An :class:`Autoencoder` for examples of ``input_shape``; ``output_dim`` must be their size
    (the targets are the inputs).

    Example
    -------
    >>> from babysit.config import ModelSpec
    >>> spec = ModelSpec(kind="autoencoder", backbone="cnn", channels=[8, 16], kernel_size=3, bottleneck=6)
    >>> build_autoencoder(spec, (1, 8, 8), 64)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 1, 8, 8])
    """
    if output_dim != math.prod(input_shape):
        raise BabysitError(f"model.kind: autoencoder reconstructs its inputs ({math.prod(input_shape)} values), "
                           f"but the loss asks for {output_dim} outputs")
    if spec.backbone == "cnn" and not spec.channels:
        raise BabysitError("model.channels: a cnn backbone needs at least one conv stage, got []")
    return Autoencoder(spec, tuple(input_shape))


__all__ = ["Autoencoder", "Decoder", "Encoder", "build_autoencoder"]
