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

Two training aids, both off in the family's defaults and in the `cifar-vae-gan` recipe:

- the loss's KL schedule (`applies_kl_weight`): the encoder is trained on kl_weight(step) * L_prior +
  L_llike, so a `beta-kl` loss with `warmup_steps` ramps the KL in (evaluation always reports the
  true L_prior);
- `gate = true`, the equilibrium gate of Larsen et al.'s code: with the discriminator's mean binary
  cross-entropies on real images and on fakes (x~ and x_p together) measured before its update, the
  discriminator is not updated when either is below `equilibrium - margin` (it is winning), and the
  decoder's GAN term is dropped (the decoder trains on gamma * L_llike alone) when either is above
  `equilibrium + margin` (it is losing); when both would be gated, neither is. The means are over the
  global batch, so every rank of a distributed run takes the same decision.

One anchor, on in the `cifar-vae-gan` recipe (`pixel_weight = 1`), off in the family's defaults:

- `pixel_weight = w > 0` adds w times the pixel likelihood -log p(x | x~) of the recipe's `loss` (binary
  cross-entropy with `bce-kl`) to the encoder's and the decoder's losses, the hybrid most VAE-GAN
  implementations train. Without it the decoder learns x~ only through Dis_l, which at the start of
  training barely tells images apart: on the short CPU run the decoder ignored z (every reconstruction
  and every sample the same texture, docs/results.md).

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
from vaezoo_defaults.rae.mixture import sum_over_ranks

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


def gate_decision(real_bce: float, fake_bce: float, equilibrium: float, margin: float) -> tuple[bool, bool]:
    """The equilibrium gate: (update the discriminator, train the decoder on the GAN term), from the
    discriminator's mean binary cross-entropy on real images and on fakes."""
    train_discriminator = min(real_bce, fake_bce) >= equilibrium - margin
    train_generator = max(real_bce, fake_bce) <= equilibrium + margin
    if not (train_discriminator or train_generator):
        return True, True
    return train_discriminator, train_generator


def feature_nll(real: Tensor, fake: Tensor) -> Tensor:
    """-log N(real; fake, I) per image (eq. 6): the Gaussian observation model in Dis_l's feature space."""
    return 0.5 * ((real - fake).pow(2) + LOG_2PI).flatten(1).sum(1)


class VAEGAN(EncoderDecoderFamily):
    """VAE-GAN: the recipe's Gaussian encoder, decoder, prior and pixel likelihood `loss` (used for the
    images the decoder makes and for the evaluation's recon), and a conv discriminator of widths
    `disc_hidden`; the decoder weighs L_llike by `gamma` against the GAN loss."""

    objective = "vae-gan"
    regularizer = "kl"  # LossParts.kl is L_prior = KL(q(z|x) || p(z))
    applies_kl_weight = True  # the encoder's L_prior is weighted by loss.kl_weight(step) (beta-kl's warm-up)

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
        gate: bool = False,
        equilibrium: float = 0.68,
        margin: float = 0.35,
        pixel_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not (
            isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma >= 0
        ):
            raise ValueError(f"vae-gan needs gamma: a finite number >= 0, got {gamma!r}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"vae-gan gan_loss must be one of {', '.join(GAN_LOSSES)}, got {gan_loss!r}")
        if not isinstance(gate, bool):
            raise ValueError(f"vae-gan gate must be true or false, got {gate!r}")
        for key, value in (("equilibrium", equilibrium), ("margin", margin), ("pixel_weight", pixel_weight)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
                raise ValueError(f"vae-gan needs {key}: a finite number >= 0, got {value!r}")
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.discriminator = Discriminator(in_shape, disc_hidden)
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        self.gamma, self.gan_loss = float(gamma), gan_loss
        self.gate, self.equilibrium, self.margin = gate, float(equilibrium), float(margin)
        self.pixel_weight = float(pixel_weight)
        self.last_gate = (True, True)  # the last training step's decision (discriminator, decoder's GAN term)
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

    def discriminator_bce(self, x: Tensor, x_rec: Tensor, x_prior: Tensor) -> Tensor:
        """The discriminator's binary cross-entropies (3, B): -log Dis(x), -log(1 - Dis(x~)), -log(1 - Dis(x_p))."""
        logits = self.discriminator(torch.cat([x, x_rec, x_prior]))[1].float().view(3, -1)
        return torch.stack([F.softplus(-logits[0]), F.softplus(logits[1]), F.softplus(logits[2])])

    def discriminator_loss(self, x: Tensor, x_rec: Tensor, x_prior: Tensor) -> Tensor:
        """-L_GAN per image: -log Dis(x) - log(1 - Dis(x~)) - log(1 - Dis(x_p))."""
        return self.discriminator_bce(x, x_rec, x_prior).sum(0)

    def gate_players(self, bce: Tensor) -> tuple[bool, bool]:
        """(update the discriminator, give the decoder its GAN term) for a batch's discriminator
        cross-entropies `bce` (3, B): the equilibrium gate's decision on the global batch, or (True, True)
        without the gate."""
        if not self.gate:
            return True, True
        sums = bce.detach().double().sum(1)
        (total,) = sum_over_ranks([torch.stack([sums[0], sums[1] + sums[2], sums.new_tensor(bce.shape[1])])])
        real, fake, count = total.tolist()
        return gate_decision(real / count, fake / (2 * count), self.equilibrium, self.margin)

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """The decoder's part of -L_GAN per image, summed over its fakes (x~ and x_p): `fake_logits` (2, B)."""
        if self.gan_loss == "minimax":
            return -F.softplus(fake_logits).sum(0)  # log(1 - Dis(.)) = -softplus(logit)
        return F.softplus(-fake_logits).sum(0)  # -log Dis(.)

    def training_step(self, x: Tensor, y: Tensor | None, step: int, update) -> LossParts:
        """Algorithm 1, one player at a time: the discriminator on -L_GAN, the encoder on L_prior +
        L_llike, the decoder on gamma * L_llike - L_GAN (one posterior and one prior sample per image,
        shared by the three losses), encoder and decoder each also on pixel_weight * recon where it is
        > 0. Returns the pixel recon + kl of the batch, as evaluation does."""
        mu, logvar, z = self.posterior(x)
        z_prior = self.prior.sample(len(x)).to(z.dtype)
        with torch.no_grad():
            x_rec, x_prior = self.images(z), self.images(z_prior)
        bce = self.discriminator_bce(x, x_rec, x_prior)
        d_loss = bce.sum(0)
        train_discriminator, train_generator = self.last_gate = self.gate_players(bce)
        if train_discriminator:
            update("discriminator", d_loss)

        with torch.no_grad():
            real_features = self.discriminator.features(x)
        out = self.decoder(z)
        recon = self.loss.nll(x.float(), out.float())
        llike = feature_nll(real_features.float(), self.discriminator.features(self.loss.image(out)).float())
        kl = self.prior.kl(mu.float(), logvar.float(), z.float())
        pixels = self.pixel_weight * recon if self.pixel_weight > 0 else 0.0
        update("encoder", self.loss.kl_weight(step) * kl + llike + pixels)

        out_dec = self.decoder(z.detach())
        fakes = torch.cat([self.loss.image(out_dec), self.images(z_prior)])
        features, logits = self.discriminator(fakes)
        g_loss = self.generator_loss(logits.float().view(2, -1))
        llike_dec = feature_nll(real_features.float(), features[: len(x)].float())
        pixels_dec = self.pixel_weight * self.loss.nll(x.float(), out_dec.float()) if self.pixel_weight > 0 else 0.0
        update("decoder", self.gamma * llike_dec + pixels_dec + (g_loss if train_generator else 0.0))
        recon, kl = recon.detach(), kl.detach()
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
