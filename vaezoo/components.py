"""The interfaces a plugin implements. Shapes: images are `(B, C, H, W)` floats in [0, 1]; latents
are `(B, latent_dim)`. Every constructor takes keyword arguments only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


class Encoder(nn.Module):
    """Built with `in_shape=(C, H, W)`, `latent_dim` and recipe keys; `forward(x) -> (mu, logvar)`."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class Decoder(nn.Module):
    """Built with `out_shape=(C * k, H, W)`, `latent_dim` (and `in_shape`); `forward(z) -> (B, *out_shape)`."""

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


class Prior(nn.Module):
    """p(z). Built with `latent_dim` (and `in_shape`). Subclasses give `sample` and `log_prob`;
    `kl` defaults to a one-sample Monte Carlo estimate, override it with a closed form when there is one."""

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def bind(self, encoder: nn.Module) -> None:
        """Called once by the model with its encoder (a VampPrior needs it). Do not register the
        encoder as a submodule: it would be saved twice."""

    def sample(self, n: int) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def kl(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(q(z|x) || p(z)) per image; `z` is a sample from q."""
        return gaussian_log_prob(z, mu, logvar) - self.log_prob(z)


@dataclass
class LossParts:
    """Per-image values, each `(B,)`: the training objective and the negative ELBO's two parts."""

    loss: Tensor
    recon: Tensor
    kl: Tensor


class Loss(nn.Module):
    """Likelihood p(x|z) + KL. Subclasses give `nll` and `mean_image`.

    `params_per_channel` is how many decoder outputs the likelihood needs per image channel;
    `discrete` is True when `nll` is a proper likelihood over the 256 pixel values, so bits per
    dimension are meaningful."""

    params_per_channel: int = 1
    discrete: bool = False

    def nll(self, x: Tensor, out: Tensor) -> Tensor:  # pragma: no cover - interface
        """-log p(x | decoder output) per image, summed over pixels, in nats."""
        raise NotImplementedError

    def mean_image(self, out: Tensor) -> Tensor:  # pragma: no cover - interface
        """The decoder output as an image in [0, 1] (for pictures)."""
        raise NotImplementedError

    def kl_weight(self, step: int | None) -> float:
        """Weight of the KL term at a training step (`None`: evaluation, the true ELBO)."""
        return 1.0

    def forward(self, x: Tensor, out: Tensor, mu: Tensor, logvar: Tensor, z: Tensor, prior: Prior, step: int | None = None) -> LossParts:
        recon = self.nll(x.float(), out.float())
        kl = prior.kl(mu.float(), logvar.float(), z.float())
        weight = self.kl_weight(step)
        return LossParts(recon + kl if weight == 1.0 else recon + weight * kl, recon, kl)


class Dataset:
    """Built with `root` (a folder, maybe empty or missing) and recipe keys. `shape` is `(C, H, W)`;
    `load(split)` returns `(images, labels)`: uint8 `(N, C, H, W)` and int64 `(N,)`."""

    shape: tuple[int, int, int]
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)

    def load(self, split: str) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def cache_key(self) -> str:
        """What identifies this dataset's decoded images in the cache (path and options)."""
        return f"{type(self).__module__}.{type(self).__qualname__}:{self.root.resolve()}"
