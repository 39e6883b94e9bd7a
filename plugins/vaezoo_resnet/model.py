"""Residual encoder/decoder: deeper and wider than `conv`. `hidden` gives one width per resolution
level; each level has `blocks` residual blocks and one stride-2 (transposed) convolution, so H and W
must be divisible by 2**len(hidden)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaezoo import Decoder, Encoder


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _check_levels(shape: Sequence[int], hidden: Sequence[int], blocks: int) -> int:
    """The downsampling factor 2**len(hidden), after checking the shape and options."""
    if not hidden or blocks < 0:
        raise ValueError(f"resnet needs at least one width in hidden and blocks >= 0, got hidden={list(hidden)}, blocks={blocks}")
    factor = 2 ** len(hidden)
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(f"resnet needs H and W divisible by {factor} for {len(hidden)} levels, got {tuple(shape)}")
    return factor


class ResNetEncoder(Encoder):
    """Residual blocks with GroupNorm and SiLU, stride-2 downsampling, linear heads to mu and logvar."""

    def __init__(self, *, in_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (64, 128, 256), blocks: int = 2) -> None:
        super().__init__()
        factor = _check_levels(in_shape, hidden, blocks)
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], hidden[0], 3, padding=1)]
        channels = hidden[0]
        for width in hidden:
            layers += [ResBlock(channels) for _ in range(blocks)]
            layers.append(nn.Conv2d(channels, width, 4, stride=2, padding=1))
            channels = width
        layers += [_norm(channels), nn.SiLU(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        flat = channels * (in_shape[1] // factor) * (in_shape[2] // factor)
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class ResNetDecoder(Decoder):
    """Linear layer, residual blocks and stride-2 transposed convolutions (mirror of the resnet encoder)."""

    def __init__(self, *, out_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 128, 64), blocks: int = 2) -> None:
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
