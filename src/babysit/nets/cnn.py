"""Plain convolutional network (``model.kind: cnn``), 1-D or 2-D by the input shape.

x (B, *input_shape) -> (B, C, L) or (B, C, H, W) (see :func:`~babysit.nets.layers.conv_layout`)
-> one conv stage per width in ``model.channels`` -> flatten -> Linear -> (B, output_dim).

The first conv sees the raw signal and uses ``model.kernel_size``; deeper convs use
``min(kernel_size, 3)``. Each stage is conv -> norm -> activation -> dropout (maxout:
conv to C * pieces channels -> channel max -> norm -> dropout).

- 1-D signals follow the reference ConvBase of MNIST-1D (Greydanus 2020, "Scaling down
  deep learning"; 25 channels, kernels 5 / 3 / 3, stride 2, ReLU, flatten, Linear; about
  94% test accuracy): every conv has stride 2 (1 once the length is 1) and padding
  kernel // 2. With the defaults (channels [25, 25, 25], kernel_size 5) on 40-long
  MNIST-1D this is ConvBase exactly (40 -> 20 -> 10 -> 5 positions, 125 features into the
  Linear, 5,210 parameters), except that the first conv pads 2 instead of 1.
- 2-D images are small here (8x8 digits), so convs keep the size (stride 1, 'same'
  padding) and a 2x2 max-pool follows each stage (LeNet / VGG style), halving only the
  sides still at least 2 long: 8x8 -> 4x4 -> 2x2 -> 1x1, never below one pixel.
- Norms: batch -> BatchNorm1d/2d, layer -> GroupNorm(1, C), group -> GroupNorm(groups, C),
  weight / spectral -> parametrizations on every conv and the Linear.

The Linear's input size is read off a dry forward pass on a zero tensor at build time.
``model.residual`` does not apply (use ``kind: resnet`` for skips).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError
from babysit.nets.layers import (
    ChannelMaxout,
    activation,
    conv_layout,
    downsample_factors,
    dry_run,
    norm_layer,
    parametrize,
)


def conv_stage(
    in_channels: int, width: int, kernel: int, spatial: tuple[int, ...], spec: ModelSpec, index: int
) -> nn.Sequential:
    """One stage for feature maps of size ``spatial``: conv -> norm -> act (-> pool) -> dropout."""
    dims = len(spatial)
    pieces = spec.maxout_pieces if spec.activation == "maxout" else 1
    bias = spec.norm != "batch"  # BatchNorm cancels a bias before it
    if dims == 1:  # ConvBase: stride-2 convs do the downsampling
        conv = nn.Conv1d(in_channels, width * pieces, kernel, stride=downsample_factors(spatial),
                         padding=kernel // 2, bias=bias)  # fmt: skip
        pool = None
    else:  # small images: keep the size in the conv, halve it with a pool
        conv = nn.Conv2d(in_channels, width * pieces, kernel, padding="same", bias=bias)
        factors = downsample_factors(spatial)
        pool = nn.MaxPool2d(factors) if max(factors) > 1 else None
    norm = norm_layer(spec.norm, width, dims=dims, groups=spec.groups, where=f"conv stage {index}")
    if pieces > 1:
        modules = [parametrize(conv, spec.norm), ChannelMaxout(pieces), norm]
    else:
        modules = [parametrize(conv, spec.norm), norm, activation(spec.activation, width)]
    modules.append(pool)
    if spec.dropout > 0:
        modules.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*[m for m in modules if m is not None])


def conv_stages(spec: ModelSpec, conv_shape: tuple[int, ...]) -> tuple[nn.Sequential, list[tuple[int, ...]]]:
    """One :func:`conv_stage` per width in ``spec.channels`` (the first with ``spec.kernel_size``,
    the rest with at most 3) for inputs of ``conv_shape``; returns the stages and the feature-map
    shape before each stage and after the last (found by a dry run).

    Example
    -------
    >>> _, shapes = conv_stages(ModelSpec(kind="cnn", channels=[4, 8]), (1, 8, 8))
    >>> shapes[0], shapes[-1][0]
    ((1, 8, 8), 8)
    """
    probe = torch.zeros(1, *conv_shape)
    shapes = [tuple(probe.shape[1:])]
    stages = []
    for index, width in enumerate(spec.channels, start=1):
        kernel = spec.kernel_size if index == 1 else min(spec.kernel_size, 3)
        stage = conv_stage(probe.shape[1], width, kernel, tuple(probe.shape[2:]), spec, index)
        probe = dry_run(stage, probe)  # (1, width, *smaller spatial)
        stages.append(stage)
        shapes.append(tuple(probe.shape[1:]))
    return nn.Sequential(*stages), shapes


class ConvNet(nn.Module):
    """Conv stages -> flatten -> Linear; see the module docstring.

    Example
    -------
    >>> net = ConvNet(ModelSpec(kind="cnn"), (40,), 10)
    >>> net(torch.randn(2, 40)).shape, sum(p.numel() for p in net.parameters())
    (torch.Size([2, 10]), 5210)
    """

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int):
        super().__init__()
        self.conv_shape = conv_layout(input_shape, spec.kind)  # (C, L) or (C, H, W)
        self.features, shapes = conv_stages(spec, self.conv_shape)
        self.head = parametrize(nn.Linear(math.prod(shapes[-1]), output_dim), spec.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.conv_shape)  # (B, *input_shape) -> (B, C, *spatial)
        h = self.features(h)  # (B, C_last, *spatial_last)
        return self.head(h.flatten(1))  # (B, C_last * prod(spatial_last)) -> (B, output_dim)


def build_cnn(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """A :class:`ConvNet` for examples of ``input_shape`` (not yet initialised; see nets.build).

    Example
    -------
    >>> build_cnn(ModelSpec(kind="cnn", channels=[4, 8]), (1, 8, 8), 10)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    if spec.residual:
        raise BabysitError(
            "model.residual: applies to kind mlp; for a convolutional net with skip connections "
            "use model.kind: resnet"
        )
    return ConvNet(spec, input_shape, output_dim)
