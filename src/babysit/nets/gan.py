"""Generative adversarial network (``model.kind: gan``): a generator and a discriminator.

Goodfellow et al. 2014, "Generative adversarial nets": the generator G maps noise
z ~ N(0, I) of ``model.latent`` numbers to an example; the discriminator D maps an example
to one logit, "real" when positive. They are trained against each other, each with its own
optimizer (babysit.families.gan): D to tell the training examples from G's, G to make D call
its examples real.

The two networks are the autoencoder's halves (nets/autoencoder.py), so ``model.backbone``,
``model.hidden`` and ``model.channels`` mean the same: D is an :class:`Encoder` to one logit,
G a :class:`Decoder` from the noise, its layers the encoder's mirrored. Following DCGAN
(Radford, Metz & Chintala 2016) the spec defaults to leaky ReLU units (slope 0.01 here,
babysit's leaky_relu) and Adam at lr 2e-4 with beta1 = 0.5 (config.py). G's output is
linear, so the data can be standardised or left in [0, 1].

``forward(x)`` is the discriminator: the module is a real-versus-fake classifier to any
tool that only calls the model (preflight, landscape); :meth:`GAN.sample` draws from G.

Example
-------
>>> from babysit.config import ModelSpec
>>> gan = build_gan(ModelSpec(kind="gan", hidden=[32], latent=8), (1, 8, 8), 1)
>>> gan.sample(4).shape, gan(torch.randn(4, 1, 8, 8)).shape
(torch.Size([4, 1, 8, 8]), torch.Size([4, 1]))
"""

from __future__ import annotations

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError
from babysit.nets.autoencoder import Decoder, Encoder


class GAN(nn.Module):
    """A generator and a discriminator; ``forward`` is the discriminator's logit (B, 1)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent: int):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.latent = latent

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of the noise z ~ N(0, I), (n, latent), on the model's device."""
        device = next(self.parameters()).device
        if generator is None:  # the global stream of the device: no host-to-device copy per step
            return torch.randn(n, self.latent, device=device)
        return torch.randn(n, self.latent, generator=generator).to(device)  # a seeded CPU stream

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n examples from the generator, (n, *example_shape)."""
        return self.generator(self.noise(n, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x)  # (B, *example_shape) -> (B, 1) logit: real when > 0


def build_gan(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """A :class:`GAN` for examples of ``input_shape``; the discriminator has one output
    (``output_dim`` is not used: D's output is the real/fake logit whatever the data's labels).

    Example
    -------
    >>> from babysit.config import ModelSpec
    >>> spec = ModelSpec(kind="gan", backbone="cnn", channels=[8, 16], kernel_size=3, latent=4)
    >>> build_gan(spec, (1, 8, 8), 1).generator(torch.randn(3, 4)).shape
    torch.Size([3, 1, 8, 8])
    """
    if spec.backbone == "cnn" and not spec.channels:
        raise BabysitError("model.channels: a cnn backbone needs at least one conv stage, got []")
    generator = Decoder(spec, tuple(input_shape), spec.latent)
    discriminator = Encoder(spec, tuple(input_shape), 1)
    return GAN(generator, discriminator, spec.latent)


__all__ = ["GAN", "build_gan"]
