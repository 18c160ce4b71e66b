"""Multilayer perceptron (``model.kind: mlp``).

x (B, *input_shape) -> flatten -> [Linear -> norm -> activation -> dropout] per width in
``model.hidden`` -> Linear -> (B, output_dim). ``hidden: []`` is a single Linear: logistic
regression under cross-entropy, linear regression under MSE.

- Maxout (Goodfellow et al. 2013) replaces the Linear + activation pair with one
  :class:`~babysit.nets.layers.Maxout` layer of the same width; the norm comes after it.
- Dropout is torch's inverted dropout (Srivastava et al. 2014): units are zeroed with
  probability p in training and the rest scaled by 1/(1-p), so eval needs no rescaling.
- ``residual: true`` wraps each hidden layer whose input and output widths match in an
  identity skip, h <- h + f(h) (He et al. 2016); layers that change width have no skip
  (no projection), so a [100, 100, 100] MLP on 40 inputs gets skips around layers 2 and 3.
  Each branch starts scaled by 1/L (:meth:`MLP.scale_residual_branches`), so a deep residual
  MLP starts near ln C.
- ``norm: batch`` drops the Linear's bias: BatchNorm subtracts the batch mean, which
  cancels any bias (Ioffe & Szegedy 2015, section 3.2), and a bias whose gradient is
  always zero only confuses the gradient monitors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.nets.layers import Maxout, activation, norm_layer, parametrize, scale_branch_end


class HiddenLayer(nn.Sequential):
    """One hidden layer, Linear -> norm -> activation -> dropout (Maxout -> norm -> dropout).

    ``skip`` says whether the MLP adds it as a residual branch: h + layer(h).
    """

    def __init__(self, in_width: int, width: int, spec: ModelSpec, index: int):
        norm = norm_layer(
            spec.norm, width, dims=0, groups=spec.groups, where=f"hidden layer {index}"
        )
        if spec.activation == "maxout":
            modules = [parametrize(Maxout(in_width, width, spec.maxout_pieces), spec.norm), norm]
        else:
            linear = nn.Linear(in_width, width, bias=spec.norm != "batch")
            modules = [parametrize(linear, spec.norm), norm, activation(spec.activation, width)]
        if spec.dropout > 0:
            modules.append(nn.Dropout(spec.dropout))
        super().__init__(*[m for m in modules if m is not None])
        self.skip = spec.residual and in_width == width


class MLP(nn.Module):
    """Fully connected network; see the module docstring.

    Example
    -------
    >>> net = MLP(ModelSpec(hidden=[16]), (40,), 10)
    >>> net(torch.randn(3, 40)).shape
    torch.Size([3, 10])
    """

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int):
        super().__init__()
        in_width = math.prod(input_shape)
        layers = []
        for index, width in enumerate(spec.hidden, start=1):
            layers.append(HiddenLayer(in_width, width, spec, index))
            in_width = width
        self.hidden = nn.ModuleList(layers)
        self.head = parametrize(nn.Linear(in_width, output_dim), spec.norm)

    def scale_residual_branches(self) -> None:
        """After initialisation: each residual branch's output scaled by 1/L (L branches), on its
        norm's affine weight, else on its Linear. Fixup (Zhang et al. 2019) and GPT-2 scale the
        branches by 1/sqrt(L), which bounds the stream's variance; here the branch ends in its
        activation, and a ReLU's output has a positive mean that adds up linearly over the
        blocks, so 1/sqrt(L) still let the initial loss reach 22 (16 blocks) and 150 (64) without
        norm, 6.5 and 7.9 with layer norm; 1/L keeps it at 3.0-4.6 (ln 10 = 2.3) from 4 to 64
        blocks, with or without norm (tests/test_nets.py). The skip itself is untouched, so the
        signal and the gradient pass through at init as in a plain residual net."""
        branches = [layer for layer in self.hidden if layer.skip]
        for layer in branches:
            norms = [m for m in layer if isinstance(m, nn.LayerNorm | nn.BatchNorm1d | nn.GroupNorm)
                     and getattr(m, "weight", None) is not None]
            scale_branch_end(norms[-1] if norms else layer[0], 1.0 / len(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)  # (B, *input_shape) -> (B, D)
        for layer in self.hidden:
            h = h + layer(h) if layer.skip else layer(h)  # (B, width)
        return self.head(h)  # (B, output_dim)


def build_mlp(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """An :class:`MLP` for examples of ``input_shape`` (not yet initialised; see nets.build).

    Example
    -------
    >>> build_mlp(ModelSpec(hidden=[]), (2,), 3)(torch.randn(5, 2)).shape
    torch.Size([5, 3])
    """
    return MLP(spec, input_shape, output_dim)
