"""Fully connected encoder/decoder for small images (MNIST-sized); `hidden` lists the layer widths."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vaezoo import Decoder
from vaezoo_defaults.common import GaussianEncoder, check_widths


def _stack(widths: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU for each consecutive pair of widths."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MLPEncoder(GaussianEncoder):
    """Fully connected layers with ReLU on the flattened image, linear heads to mu and logvar."""

    def __init__(self, *, in_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (512, 256)) -> None:
        check_widths("mlp", hidden)
        widths = [math.prod(in_shape), *hidden]
        super().__init__(nn.Sequential(nn.Flatten(), _stack(widths)), widths[-1], latent_dim)


class MLPDecoder(Decoder):
    """Fully connected layers with ReLU, reshaped to the image (mirror of the mlp encoder)."""

    def __init__(self, *, out_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 512)) -> None:
        check_widths("mlp", hidden)
        super().__init__()
        self.out_shape = tuple(out_shape)
        widths = [latent_dim, *hidden]
        self.net = nn.Sequential(_stack(widths), nn.Linear(widths[-1], math.prod(out_shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.out_shape)
