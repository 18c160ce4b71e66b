"""Residual network (``model.kind: resnet``), 1-D or 2-D by the input shape.

He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition", basic blocks:

    x (B, *input_shape) -> (B, C, L) or (B, C, H, W)        (see layers.conv_layout)
    stem: conv(kernel_size, same size) -> norm -> act
    per width in model.channels: a basic block
        out = act( norm(conv3(act(norm(conv3(x))))) + shortcut(x) )
        shortcut = identity, or a 1x1 conv (+ norm) when the width or size changes
    global average pool -> Linear -> (B, output_dim)

From the second block on, the first conv has stride 2 along each side still at least 2
long (so a side never shrinks below 1). Block convs are 3 wide, as in the paper; the stem
uses ``model.kernel_size``. Dropout, when asked, sits between the two convs of a block
(Zagoruyko & Komodakis 2016, "Wide Residual Networks"). ``norm: none`` works (plain
residual blocks); ``weight`` / ``spectral`` parametrise every conv and the Linear.

Maxout (Goodfellow et al. 2013): the convs in front of a nonlinearity produce
``C * pieces`` channels and a channel max brings them back to C; the norm follows the max.
The activation after the addition is left out for maxout (there is no conv in front of
it to widen), so a maxout block is ``norm(conv(maxout(conv x))) + shortcut(x)``.
"""

from __future__ import annotations

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError
from babysit.nets.layers import (
    CONV,
    ChannelMaxout,
    activation,
    conv_layout,
    downsample_factors,
    dry_run,
    norm_layer,
    parametrize,
    scale_branch_end,
)


def conv_norm_act(
    conv: nn.Module, width: int, dims: int, spec: ModelSpec, where: str
) -> list[nn.Module]:
    """[conv, norm, act], or [conv, channel max, norm] for maxout (conv has width * pieces)."""
    conv = parametrize(conv, spec.norm)
    norm = norm_layer(spec.norm, width, dims=dims, groups=spec.groups, where=where)
    if spec.activation == "maxout":
        modules = [conv, ChannelMaxout(spec.maxout_pieces), norm]
    else:
        modules = [conv, norm, activation(spec.activation, width)]
    return [m for m in modules if m is not None]


UNSCALED_BLOCKS = 4  # a resnet with up to this many normed blocks keeps He et al.'s init (ResNet.scale_residual_branches)


class BasicBlock(nn.Module):
    """Two 3-wide convs with norms and an identity (or 1x1 projection) skip; see module doc."""

    def __init__(
        self, in_channels: int, width: int, stride: tuple[int, ...], spec: ModelSpec, index: int
    ):
        super().__init__()
        dims = len(stride)
        conv = CONV[dims]
        pieces = spec.maxout_pieces if spec.activation == "maxout" else 1
        bias = spec.norm != "batch"  # BatchNorm cancels a bias before it
        where = f"resnet block {index}"

        first = conv(in_channels, width * pieces, 3, stride=stride, padding=1, bias=bias)
        modules = conv_norm_act(first, width, dims, spec, where)
        if spec.dropout > 0:
            modules.append(nn.Dropout(spec.dropout))
        modules.append(parametrize(conv(width, width, 3, padding=1, bias=bias), spec.norm))
        modules.append(norm_layer(spec.norm, width, dims=dims, groups=spec.groups, where=where))
        self.branch = nn.Sequential(*[m for m in modules if m is not None])

        if in_channels != width or max(stride) > 1:  # projection shortcut (He et al., option B)
            projection = parametrize(
                conv(in_channels, width, 1, stride=stride, bias=bias), spec.norm
            )
            norm = norm_layer(spec.norm, width, dims=dims, groups=spec.groups, where=where)
            self.shortcut = nn.Sequential(*[m for m in (projection, norm) if m is not None])
        else:
            self.shortcut = nn.Identity()
        self.act = nn.Identity() if pieces > 1 else activation(spec.activation, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))  # (B, C_in, *S) -> (B, width, *S')


class ResNet(nn.Module):
    """Stem -> basic blocks -> global average pool -> Linear; see the module docstring.

    Example
    -------
    >>> net = ResNet(ModelSpec(kind="resnet", channels=[8, 16]), (1, 8, 8), 10)
    >>> net(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int):
        super().__init__()
        if not spec.channels:
            raise BabysitError("model.channels: a resnet needs at least one stage width, got []")
        self.conv_shape = conv_layout(input_shape, spec.kind)  # (C, L) or (C, H, W)
        dims = len(self.conv_shape) - 1
        pieces = spec.maxout_pieces if spec.activation == "maxout" else 1
        stem_conv = CONV[dims](self.conv_shape[0], spec.channels[0] * pieces, spec.kernel_size,
                               padding="same", bias=spec.norm != "batch")  # fmt: skip
        self.stem = nn.Sequential(
            *conv_norm_act(stem_conv, spec.channels[0], dims, spec, "the resnet stem")
        )

        probe = dry_run(self.stem, torch.zeros(1, *self.conv_shape))
        blocks = []
        for index, width in enumerate(spec.channels, start=1):
            spatial = tuple(probe.shape[2:])
            stride = downsample_factors(spatial) if index > 1 else (1,) * dims
            block = BasicBlock(probe.shape[1], width, stride, spec, index)
            probe = dry_run(block, probe)  # (1, width, *spatial / stride)
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = parametrize(nn.Linear(spec.channels[-1], output_dim), spec.norm)

    def scale_residual_branches(self) -> None:
        """After initialisation, in a net of more than :data:`UNSCALED_BLOCKS` blocks: each
        branch ending in a norm scaled by sqrt(UNSCALED_BLOCKS / L) on that norm's affine weight.
        The norm's output has zero mean and unit variance and the ReLU comes after the sum, so
        each block adds one branch's variance to the stream; the scale caps the total at about
        UNSCALED_BLOCKS branches' worth at any depth (Fixup, Zhang et al. 2019, and GPT-2 scale
        by 1/sqrt(L); Goyal et al. 2017 zero gamma), and leaves the shallow nets He et al. built,
        like the MNIST-1D example, as they were: its 3 blocks lost 5 points of validation accuracy
        after 2 epochs under 1/sqrt(L), 14 under 1/L and 28 under zero gamma. A branch without a
        norm has its last conv scaled by 1/L, as the MLP's branches are (see
        :meth:`babysit.nets.mlp.MLP.scale_residual_branches`). Initial losses from 4 to 64 blocks:
        tests/test_nets.py."""
        blocks = list(self.blocks)
        for block in blocks:
            last = block.branch[-1]
            if isinstance(last, nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm) and last.weight is not None:
                scale_branch_end(last, min(1.0, (UNSCALED_BLOCKS / len(blocks)) ** 0.5))
            else:
                conv = [m for m in block.branch if isinstance(m, nn.Conv1d | nn.Conv2d)][-1]
                scale_branch_end(conv, 1.0 / len(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.conv_shape)  # (B, *input_shape) -> (B, C, *spatial)
        h = self.blocks(self.stem(h))  # (B, C_last, *spatial_last)
        h = self.pool(h).flatten(1)  # global average pool -> (B, C_last)
        return self.head(h)  # (B, output_dim)


def build_resnet(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """A :class:`ResNet` for examples of ``input_shape`` (not yet initialised; see nets.build).

    Example
    -------
    >>> build_resnet(ModelSpec(kind="resnet", channels=[8]), (40,), 10)(torch.randn(2, 40)).shape
    torch.Size([2, 10])
    """
    return ResNet(spec, input_shape, output_dim)
