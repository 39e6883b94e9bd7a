"""The VAE-GAN family (Larsen, Sønderby, Larochelle and Winther 2016, "Autoencoding beyond pixels using
a learned similarity metric"): a VAE whose decoder doubles as a GAN generator, and whose reconstruction
error is measured in the feature space of the GAN's discriminator instead of in pixels.

With x~ = Dec(z), z ~ q(z|x) (reparameterised) and x_p = Dec(z_p), z_p ~ p(z) (paper, section 2):

- L_prior = KL(q(z|x) || p(z))                                                         (eq. 3)
- L_llike^Dis_l = -E_q[log N(Dis_l(x); Dis_l(x~), I)], Dis_l the l-th layer's features (eqs. 6-7)
- L_GAN = log Dis(x) + log(1 - Dis(x~)) + log(1 - Dis(x_p))                             (eq. 8)

and Algorithm 1's updates: the encoder on L_prior + L_llike, the decoder on gamma * L_llike - L_GAN,
the discriminator on L_GAN (ascending it, i.e. on its binary cross-entropy), each with its own
optimizer ("encoder", "decoder", "discriminator"); L_llike never trains the discriminator (section
2.1, "limiting error signals to relevant networks"). The decoder's part of -L_GAN is by default
Goodfellow et al.'s non-saturating form -log Dis(x~) - log Dis(x_p) (`gan_loss = "minimax"` keeps
log(1 - Dis(.))).

Algorithm 1 takes the three gradients from one forward pass; here each player's loss is computed just
before its own update (discriminator, then encoder, then decoder), since an optimizer step changes the
weights a shared graph would need. The discriminator is a smaller version of the paper's (stride-2
convolutions, LeakyReLU, no batch norm, so that every image's loss is its own and two ranks of
torchrun compute what one process computes); Dis_l is the output of its last convolution.

Evaluation (`step=None`) reports recon = -log p(x | x~) under the recipe's pixel likelihood (binary
cross-entropy summed over pixels with `bce-kl`, as cifar-vae) and kl = L_prior, so that loss = recon +
kl compares with cifar-vae's negative ELBO; the decoder is not trained on that pixel likelihood. The
terms are L_llike (`feature_recon`), the discriminator's loss -L_GAN (`gan_discriminator`) and the
decoder's GAN loss (`gan_generator`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts, Prior
from vaezoo.components import ParamGroup
from vaezoo_defaults.common import check_widths, downsampling_factor

GAN_LOSSES = ("non-saturating", "minimax")
LOG_2PI = math.log(2 * math.pi)


class Discriminator(nn.Module):
    """Stride-2 4x4 convolutions with LeakyReLU(0.2) on images mapped to [-1, 1]; `features` is the last
    convolution's output (Dis_l), a linear layer on it gives the logit of "x is a real image"."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int]) -> None:
        super().__init__()
        check_widths("vae-gan discriminator", hidden)
        factor = downsampling_factor("vae-gan discriminator", in_shape, len(hidden))
        layers: list[nn.Module] = []
        channels = in_shape[0]
        for width in hidden:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = width
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels * (in_shape[1] // factor) * (in_shape[2] // factor), 1)

    def features(self, images: Tensor) -> Tensor:
        """Dis_l(x): the last convolution's activations, flattened to (B, D)."""
        return self.convs(2 * images - 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(Dis_l features (B, D), logit of Dis (B,))."""
        features = self.features(images)
        return features, self.head(features).squeeze(1)


def feature_nll(real: Tensor, fake: Tensor) -> Tensor:
    """-log N(real; fake, I) per image (eq. 6): the Gaussian observation model in Dis_l's feature space."""
    return 0.5 * ((real - fake).pow(2) + LOG_2PI).flatten(1).sum(1)


class VAEGAN(EncoderDecoderFamily):
    """VAE-GAN: the recipe's Gaussian encoder, decoder, prior and pixel likelihood `loss` (used for the
    images the decoder makes and for the evaluation's recon), and a conv discriminator of widths
    `disc_hidden`; the decoder weighs L_llike by `gamma` against the GAN loss."""

    objective = "vae-gan"
    regularizer = "kl"  # LossParts.kl is L_prior = KL(q(z|x) || p(z))

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int,
        disc_hidden: Sequence[int] = (32, 64, 128),
        gamma: float = 1.0,
        gan_loss: str = "non-saturating",
    ) -> None:
        super().__init__()
        if not (
            isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma >= 0
        ):
            raise ValueError(f"vae-gan needs gamma: a finite number >= 0, got {gamma!r}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"vae-gan gan_loss must be one of {', '.join(GAN_LOSSES)}, got {gan_loss!r}")
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.discriminator = Discriminator(in_shape, disc_hidden)
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        self.gamma, self.gan_loss = float(gamma), gan_loss
        prior.bind(encoder)

    def parameter_groups(self) -> dict[str, ParamGroup]:
        """Algorithm 1's three players; the adversarial ones with Adam betas (0.5, 0.999) as in DCGAN."""
        return {
            "encoder": ParamGroup([*self.encoder.parameters(), *self.prior.parameters()]),
            "decoder": ParamGroup(list(self.decoder.parameters()), betas=(0.5, 0.999)),
            "discriminator": ParamGroup(list(self.discriminator.parameters()), betas=(0.5, 0.999)),
        }

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, logvar, z) with z = mu + sigma * eps drawn from q(z|x)."""
        mu, logvar = self.encoder(x)
        return mu, logvar, mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def images(self, z: Tensor) -> Tensor:
        """Dec(z) as images in [0, 1] (what the discriminator sees)."""
        return self.loss.image(self.decoder(z))

    def discriminator_loss(self, x: Tensor, x_rec: Tensor, x_prior: Tensor) -> Tensor:
        """-L_GAN per image: -log Dis(x) - log(1 - Dis(x~)) - log(1 - Dis(x_p))."""
        logits = self.discriminator(torch.cat([x, x_rec, x_prior]))[1].float().view(3, -1)
        return F.softplus(-logits[0]) + F.softplus(logits[1]) + F.softplus(logits[2])

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """The decoder's part of -L_GAN per image, summed over its fakes (x~ and x_p): `fake_logits` (2, B)."""
        if self.gan_loss == "minimax":
            return -F.softplus(fake_logits).sum(0)  # log(1 - Dis(.)) = -softplus(logit)
        return F.softplus(-fake_logits).sum(0)  # -log Dis(.)

    def training_step(self, x: Tensor, y: Tensor | None, step: int, update) -> LossParts:
        """Algorithm 1, one player at a time: the discriminator on -L_GAN, the encoder on L_prior +
        L_llike, the decoder on gamma * L_llike - L_GAN (one posterior and one prior sample per image,
        shared by the three losses). Returns the pixel recon + kl of the batch, as evaluation does."""
        mu, logvar, z = self.posterior(x)
        z_prior = self.prior.sample(len(x)).to(z.dtype)
        with torch.no_grad():
            x_rec, x_prior = self.images(z), self.images(z_prior)
        d_loss = self.discriminator_loss(x, x_rec, x_prior)
        update("discriminator", d_loss)

        with torch.no_grad():
            real_features = self.discriminator.features(x)
        out = self.decoder(z)
        recon = self.loss.nll(x.float(), out.float()).detach()
        llike = feature_nll(real_features.float(), self.discriminator.features(self.loss.image(out)).float())
        kl = self.prior.kl(mu.float(), logvar.float(), z.float())
        update("encoder", kl + llike)

        fakes = torch.cat([self.images(z.detach()), self.images(z_prior)])
        features, logits = self.discriminator(fakes)
        g_loss = self.generator_loss(logits.float().view(2, -1))
        llike_dec = feature_nll(real_features.float(), features[: len(x)].float())
        update("decoder", self.gamma * llike_dec + g_loss)
        kl = kl.detach()
        return LossParts(
            recon + kl,
            recon,
            kl,
            {"feature_recon": llike.detach(), "gan_discriminator": d_loss.detach(), "gan_generator": g_loss.detach()},
        )

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """recon = -log p(x | Dec(z)) in pixels and kl = L_prior (one posterior sample); terms: L_llike,
        the discriminator's loss and the decoder's GAN loss (non-saturating or minimax)."""
        mu, logvar, z = self.posterior(x)
        out = self.decoder(z)
        recon = self.loss.nll(x.float(), out.float())
        kl = self.prior.kl(mu.float(), logvar.float(), z.float())
        x_rec = self.loss.image(out)
        x_prior = self.images(self.prior.sample(len(x)).to(z.dtype))
        features, logits = self.discriminator(torch.cat([x, x_rec, x_prior]))
        features, logits = features.float().view(3, len(x), -1), logits.float().view(3, -1)
        terms = {
            "feature_recon": feature_nll(features[0], features[1]),
            "gan_discriminator": F.softplus(-logits[0]) + F.softplus(logits[1]) + F.softplus(logits[2]),
            "gan_generator": self.generator_loss(logits[1:]),
        }
        return LossParts(recon + kl, recon, kl, terms)
