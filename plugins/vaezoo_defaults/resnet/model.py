"""Residual encoder/decoder: deeper and wider than `conv`. `hidden` gives one width per resolution
level; each level has `blocks` residual blocks and one stride-2 (transposed) convolution, so H and W
must be divisible by 2**len(hidden)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaezoo import Decoder
from vaezoo_defaults.common import MAX_LAYERS, GaussianEncoder, check_int, check_widths, downsampling_factor


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _check_levels(shape: Sequence[int], hidden: Sequence[int], blocks: int) -> int:
    """The downsampling factor 2**len(hidden), after checking the shape and options."""
    check_int("resnet", "blocks", blocks, 0, MAX_LAYERS)
    return downsampling_factor("resnet", shape, len(hidden))


class ResNetEncoder(GaussianEncoder):
    """Residual blocks with GroupNorm and SiLU, stride-2 downsampling, linear heads to mu and logvar."""

    def __init__(
        self, *, in_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (64, 128, 256), blocks: int = 2
    ) -> None:
        check_widths("resnet", hidden)
        factor = _check_levels(in_shape, hidden, blocks)
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], hidden[0], 3, padding=1)]
        channels = hidden[0]
        for width in hidden:
            layers += [ResBlock(channels) for _ in range(blocks)]
            layers.append(nn.Conv2d(channels, width, 4, stride=2, padding=1))
            channels = width
        layers += [_norm(channels), nn.SiLU(), nn.Flatten()]
        flat = channels * (in_shape[1] // factor) * (in_shape[2] // factor)
        super().__init__(nn.Sequential(*layers), flat, latent_dim)


class ResNetDecoder(Decoder):
    """Linear layer, residual blocks and stride-2 transposed convolutions (mirror of the resnet encoder)."""

    def __init__(
        self, *, out_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 128, 64), blocks: int = 2
    ) -> None:
        check_widths("resnet", hidden)
        super().__init__()
        factor = _check_levels(out_shape, hidden, blocks)
        self.start = (hidden[0], out_shape[1] // factor, out_shape[2] // factor)
        self.fc = nn.Linear(latent_dim, hidden[0] * self.start[1] * self.start[2])
        layers: list[nn.Module] = []
        channels = hidden[0]
        for width in hidden:
            layers += [ResBlock(channels) for _ in range(blocks)]
            layers.append(nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1))
            channels = width
        layers += [_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_shape[0], 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z).view(-1, *self.start))
