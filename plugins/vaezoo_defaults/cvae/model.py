"""The class-conditional VAE family (Sohn et al. 2015): the encoder is q(z | x, y), the decoder p(x | z, y),
with the prior p(z) unconditional. The label enters both networks through learned class embeddings: in the
encoder as extra input channels (the embedding broadcast over the image), in the decoder concatenated
with z. The networks are the `conv` plugin's stride-2 4x4 convolutions, so the numbers compare with `cifar-vae`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo import Loss, LossParts, Model, Prior
from vaezoo_defaults.common import DECODE_BATCH, MAX_WIDTH, check_int, importance_terms, is_discrete, iw_bound
from vaezoo_defaults.conv.model import ConvDecoder, ConvEncoder


class ConditionalVAE(Model):
    """Class-conditional conv VAE: q(z | x, y), p(x | z, y), p(z) from the recipe's prior."""

    conditional = True
    applies_kl_weight = True  # the loss component's beta / warm-up
    cuda_graph = True  # its training forward reads nothing back to the host: the step may be a CUDA graph

    def __init__(
        self,
        *,
        in_shape: Sequence[int],
        num_classes: int,
        latent_dim: int,
        prior: Prior,
        loss: Loss,
        encoder_hidden: Sequence[int] = (32, 64, 128),
        decoder_hidden: Sequence[int] = (128, 64, 32),
        label_channels: int = 4,
        label_dim: int = 16,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(
                "cvae is conditional: it needs a dataset with class labels (num_classes > 0), got "
                f"num_classes={num_classes}"
            )
        check_int("cvae", "label_channels", label_channels, 1, MAX_WIDTH)
        check_int("cvae", "label_dim", label_dim, 1, MAX_WIDTH)
        if type(prior).bind is not Prior.bind:
            raise ValueError(
                "cvae's encoder takes labels, so it cannot serve a prior that uses the encoder "
                f"({type(prior).__name__})"
            )
        c, h, w = (int(d) for d in in_shape)
        self.in_shape = (c, h, w)
        self.num_classes, self.latent_dim = int(num_classes), int(latent_dim)
        self.prior, self.loss = prior, loss
        self.discrete = is_discrete(loss)
        self.encoder_label = nn.Embedding(num_classes, label_channels)
        self.encoder = ConvEncoder(
            in_shape=(c + label_channels, h, w), latent_dim=latent_dim, hidden=tuple(encoder_hidden)
        )
        self.decoder_label = nn.Embedding(num_classes, label_dim)
        out_shape = (c * loss.params_per_channel, h, w)
        self.decoder = ConvDecoder(out_shape=out_shape, latent_dim=latent_dim + label_dim, hidden=tuple(decoder_hidden))

    def posterior(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z | x, y): the conv encoder over the image with the class embedding as
        `label_channels` more (constant) channels. The first convolution is linear, so its label part
        is computed once per class, not once per image, and added: the same numbers, at about the
        cost of the plain encoder."""
        first, c = self.encoder.features[0], x.shape[1]  # the first 4x4 conv, over C + label_channels channels
        maps = self.encoder_label.weight[:, :, None, None].expand(
            -1, -1, *x.shape[2:]
        )  # (classes, label_channels, H, W)
        per_class = F.conv2d(maps, first.weight[:, c:], None, first.stride, first.padding)
        h = F.conv2d(x, first.weight[:, :c], first.bias, first.stride, first.padding) + per_class[y]
        h = self.encoder.features[1:](h)
        return self.encoder.mu(h), self.encoder.logvar(h)

    def decoder_output(self, z: Tensor, y: Tensor) -> Tensor:
        """The decoder's raw output (the loss's parameters) for latents `z` of class `y`."""
        return self.decoder(torch.cat([z, self.decoder_label(y).to(z.dtype)], dim=1))

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """The negative ELBO of log p(x | y) and its parts (one posterior sample); at a training step
        the loss's KL weight applies (1 for bce-kl)."""
        y = _labels(y)
        mu, logvar = self.posterior(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.loss(x, self.decoder_output(z, y), mu, logvar, z, self.prior, step)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """Importance-weighted estimate of log p(x | y) per image (nats) with k posterior samples; the
        B * k latents are decoded DECODE_BATCH at a time."""
        y = _labels(y)

        def nll(owner: Tensor, z: Tensor) -> Tensor:
            return self.loss.nll(x[owner].float(), self.decoder_output(z, y[owner]).float())

        return iw_bound(*importance_terms(x, *self.posterior(x, y), k, self.prior, nll, DECODE_BATCH))

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`n` images of classes `y` (n,) in [0, 1], decoded from prior samples scaled by `temperature`."""
        y = _labels(y)
        if y.shape != (n,):
            raise ValueError(f"cvae.sample needs one label per image: {n} images, labels of shape {tuple(y.shape)}")
        return self.decode(self.prior.sample(n) * temperature, y)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Images decoded, with their own labels, from the posterior means of `x`."""
        y = _labels(y)
        return self.decode(self.encode(x, y), y)

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The posterior means of q(z | x, y)."""
        return self.posterior(x, _labels(y))[0]

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [0, 1] (the likelihood's mean) for latents `z` of classes `y`."""
        return self.loss.image(self.decoder_output(z, _labels(y)))


def _labels(y: Tensor | None) -> Tensor:
    if y is None:
        raise ValueError("cvae is a conditional model: pass the class labels y, an int64 tensor (B,)")
    return y
