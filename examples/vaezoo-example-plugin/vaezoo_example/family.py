"""A small model family: a VAE whose posterior and prior are Laplace distributions, which the `vae`
family cannot express (its encoders return a Gaussian's mean and log-variance). The family brings its
own encoder and takes the decoder and the likelihood (the loss's `nll` and `mean_image`) from the
recipe; it computes its own KL, in closed form."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vaezoo


class LaplaceVAE(vaezoo.Model):
    """VAE with a Laplace posterior and a standard Laplace prior (closed-form KL)."""

    def __init__(
        self,
        *,
        in_shape: Sequence[int],
        latent_dim: int,
        decoder: nn.Module,
        loss: vaezoo.Loss,
        hidden: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__()
        factor = 2 ** len(hidden)
        if not hidden or in_shape[1] % factor or in_shape[2] % factor:
            raise ValueError(
                f"laplace needs at least one width and H, W divisible by {factor}, got "
                f"hidden={list(hidden)}, in_shape={tuple(in_shape)}"
            )
        layers: list[nn.Module] = []
        channels = in_shape[0]
        for width in hidden:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.encoder = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(channels * (in_shape[1] // factor) * (in_shape[2] // factor), 2 * latent_dim),
        )
        self.decoder, self.loss = decoder, loss
        self.latent_dim = latent_dim
        self.discrete = loss.discrete  # bits/dim are meaningful when the likelihood is discrete

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Location and scale of q(z|x), each (B, latent_dim)."""
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> vaezoo.LossParts:
        loc, scale = self.posterior(x)
        z = torch.distributions.Laplace(loc, scale).rsample()
        recon = self.loss.nll(x, self.decoder(z).float())
        # KL(Laplace(loc, scale) || Laplace(0, 1)), summed over the latent dimensions
        kl = (-torch.log(scale) - 1 + loc.abs() + scale * torch.exp(-loc.abs() / scale)).sum(-1)
        return vaezoo.LossParts(recon + kl, recon, kl)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        device = next(self.parameters()).device
        u = torch.rand(n, self.latent_dim, device=device).clamp(1e-6, 1 - 1e-6) - 0.5
        z = -torch.sign(u) * torch.log1p(-2 * u.abs())  # standard Laplace samples (inverse CDF)
        return self.decode(z * temperature)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))

    # optional capabilities: latents for interpolation, and an importance-weighted log-likelihood
    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.posterior(x)[0]

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.loss.mean_image(self.decoder(z)).clamp(0, 1)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """log p(x) by importance sampling with k posterior samples per image."""
        loc, scale = self.posterior(x)
        q = torch.distributions.Laplace(loc, scale)
        z = q.sample((k,))  # (k, B, D)
        prior = torch.distributions.Laplace(torch.zeros_like(loc), torch.ones_like(scale))
        log_px = torch.stack([-self.loss.nll(x, self.decoder(z_j).float()) for z_j in z])  # (k, B)
        log_w = log_px + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        return torch.logsumexp(log_w, dim=0) - math.log(k)
