"""Convolutional encoder/decoder of the classic CIFAR-10 VAE notebook, with configurable widths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaezoo import Decoder
from vaezoo_defaults.common import GaussianEncoder, check_widths, downsampling_factor


class ConvEncoder(GaussianEncoder):
    """Stride-2 4x4 convolutions with ReLU, linear heads to mu and logvar."""

    def __init__(self, *, in_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (32, 64, 128)) -> None:
        check_widths("conv", hidden)
        factor = downsampling_factor("conv", in_shape, len(hidden))
        layers: list[nn.Module] = []
        channels = in_shape[0]
        for width in hidden:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            channels = width
        flat = channels * (in_shape[1] // factor) * (in_shape[2] // factor)
        super().__init__(nn.Sequential(*layers, nn.Flatten()), flat, latent_dim)


class ConvDecoder(Decoder):
    """Linear layer then stride-2 4x4 transposed convolutions (mirror of the conv encoder)."""

    def __init__(self, *, out_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (128, 64, 32)) -> None:
        check_widths("conv", hidden)
        super().__init__()
        factor = downsampling_factor("conv", out_shape, len(hidden))
        self.start = (hidden[0], out_shape[1] // factor, out_shape[2] // factor)
        self.fc = nn.Linear(latent_dim, hidden[0] * self.start[1] * self.start[2])
        layers: list[nn.Module] = []
        widths = [*hidden[1:], out_shape[0]]
        channels = hidden[0]
        for i, width in enumerate(widths):
            layers.append(nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1))
            if i < len(widths) - 1:
                layers.append(nn.ReLU(inplace=True))
            channels = width
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = torch.relu(self.fc(z)).view(-1, *self.start)
        return self.net(h)
