"""The classic VAE family: one Gaussian latent, reparameterised, encoder -> decoder -> loss, assembled
from the recipe's encoder, decoder, prior and loss components. With `iw_samples = K > 1` it trains on
the importance-weighted bound (IWAE, Burda et al. 2016) with K posterior samples per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts, Prior
from vaezoo_defaults.common import DECODE_BATCH, importance_terms, is_discrete, iw_bound


class VAE(EncoderDecoderFamily):
    """Classic VAE: encoder, decoder, prior and loss components; optional IWAE training (iw_samples)."""

    applies_kl_weight = True  # the loss component's beta / warm-up (not with iw_samples > 1: refused)
    cuda_graph = True  # its training forward reads nothing back to the host: the step may be a CUDA graph

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int,
        iw_samples: int = 1,
    ) -> None:
        super().__init__()
        if iw_samples < 1:
            raise ValueError(f"vae needs iw_samples >= 1, got {iw_samples}")
        if iw_samples > 1 and any(loss.kl_weight(step) != 1.0 for step in (0, 1, 1000, 10**9)):
            raise ValueError(
                "vae with iw_samples > 1 trains on the importance-weighted bound, which has no KL weight: "
                "use a loss without beta or warm-up"
            )
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.in_shape = tuple(in_shape)
        self.latent_dim = latent_dim
        self.iw_samples = int(iw_samples)
        self.discrete = is_discrete(loss)
        prior.bind(encoder)

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """The negative ELBO and its parts (one posterior sample). In training with iw_samples K > 1,
        `loss` is the negative IWAE bound with K samples, and recon / kl are their means over the K."""
        mu, logvar = self.encoder(x)
        if self.iw_samples > 1 and step is not None:
            return self._iwae(x, mu, logvar)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.loss(x, self.decoder(z), mu, logvar, z, self.prior, step)

    def _importance_terms(self, x: Tensor, mu: Tensor, logvar: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """log p(x|z_j) and log q(z_j|x) - log p(z_j) for k posterior samples per image, each (B, k)."""

        def nll(owner: Tensor, z: Tensor) -> Tensor:
            return self.loss.nll(x[owner].float(), self.decoder(z).float())

        return importance_terms(x, mu, logvar, k, self.prior, nll, DECODE_BATCH)

    def _iwae(self, x: Tensor, mu: Tensor, logvar: Tensor) -> LossParts:
        log_px, log_ratio = self._importance_terms(x, mu, logvar, self.iw_samples)
        return LossParts(-iw_bound(log_px, log_ratio), -log_px.mean(1), log_ratio.mean(1))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """Importance-weighted estimate of log p(x) per image (nats) with k posterior samples."""
        return iw_bound(*self._importance_terms(x, *self.encoder(x), k))
