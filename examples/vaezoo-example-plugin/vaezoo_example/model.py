"""DCGAN-style encoder and decoder (Radford et al., 2016) for VAEs: 4x4 stride-2 (transposed)
convolutions with batch norm; LeakyReLU in the encoder, ReLU in the decoder. `hidden` gives one width
per stride-2 layer, so H and W must be divisible by 2 ** len(hidden)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaezoo import Decoder, Encoder


def _factor(shape: Sequence[int], hidden: Sequence[int]) -> int:
    factor = 2 ** len(hidden)
    if not hidden or shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"dcgan needs at least one width and H, W divisible by {factor}, got hidden={list(hidden)}, "
            f"shape={tuple(shape)}"
        )
    return factor


class DCGANEncoder(Encoder):
    """DCGAN-style stride-2 convolutions with batch norm and LeakyReLU."""

    def __init__(
        self, *, in_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (64, 128, 256), slope: float = 0.2
    ) -> None:
        super().__init__()
        factor = _factor(in_shape, hidden)
        layers: list[nn.Module] = []
        channels = in_shape[0]
        for i, width in enumerate(hidden):
            layers.append(nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:  # as in DCGAN: no batch norm on the first layer
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(slope, inplace=True))
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = channels * (in_shape[1] // factor) * (in_shape[2] // factor)
        self.head = nn.Linear(flat, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar


class DCGANDecoder(Decoder):
    """DCGAN-style stride-2 transposed convolutions with batch norm and ReLU."""

    def __init__(self, *, out_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        factor = _factor(out_shape, hidden)
        self.start = (hidden[0], out_shape[1] // factor, out_shape[2] // factor)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden[0] * self.start[1] * self.start[2], bias=False),
            nn.Unflatten(1, self.start),
            nn.BatchNorm2d(hidden[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        channels = hidden[0]
        for width in hidden[1:]:
            layers += [
                nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers.append(nn.ConvTranspose2d(channels, out_shape[0], 4, stride=2, padding=1))  # the likelihood's parameters
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z))
