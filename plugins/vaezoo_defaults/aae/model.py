"""The adversarial autoencoder family (Makhzani, Shlens, Jaitly, Goodfellow and Frey 2015, "Adversarial
Autoencoders"): an autoencoder whose aggregated posterior q(z) = E_x[q(z|x)] is matched to the prior
p(z) by a GAN on the codes (paper, section 2 and eq. 1) instead of a per-image KL.

The encoder is deterministic, z = Enc(x) (q(z|x) a point mass; the paper's first choice, section 2);
the recipe's Gaussian encoder gives z as its mean and its logvar head is unused. A discriminator D (an
MLP on codes, as the paper's two layers of ReLU units) tells samples of p(z) from codes. Each training
step, per image:

- regularization phase, discriminator: -log D(z') - log(1 - D(Enc(x))), z' ~ p(z);
- reconstruction phase and the encoder as generator: recon(x, Dec(Enc(x))) + adversarial_weight *
  (-log D(Enc(x))) (Goodfellow et al.'s non-saturating generator loss), one step of one "autoencoder"
  optimizer over encoder and decoder, against the discriminator just updated.

The paper alternates the reconstruction phase and the generator step as two SGD updates; vaezoo gives
each parameter one optimizer, so the encoder takes both gradients in one step (with plain SGD, to first
order, the paper's phases with the regularization phase's learning rate `adversarial_weight` times the
reconstruction phase's).

recon is the recipe's pixel likelihood -log p(x | Dec(z)) (binary cross-entropy summed over pixels
with `bce-kl`, as cifar-vae); kl holds the regularizer `adversarial`: the encoder's generator loss
-log D(Enc(x)) per image (log 2 when D cannot tell codes from prior samples), and evaluation's loss is
recon + adversarial. The term `discriminator` is D's loss. Sampling decodes z ~ p(z)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts, Prior
from vaezoo.components import ParamGroup
from vaezoo_defaults.common import check_widths


class CodeDiscriminator(nn.Module):
    """MLP on codes: `hidden` ReLU layers, then the logit of "z is a sample of p(z)"."""

    def __init__(self, latent_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        check_widths("aae discriminator", hidden)
        layers: list[nn.Module] = []
        width = latent_dim
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(1)


class AdversarialAE(EncoderDecoderFamily):
    """Adversarial autoencoder: the recipe's encoder (its mean as a deterministic code), decoder and
    pixel likelihood `loss`, a fixed prior p(z) to match, and a code discriminator of widths
    `disc_hidden`; the encoder's generator loss is weighted by `adversarial_weight` in training."""

    objective = "aae"
    regularizer = "adversarial"  # LossParts.kl is the encoder's generator loss -log D(Enc(x))
    unused_parameters = ("encoder.logvar.",)  # the Gaussian encoder's logvar head: the code is its mean

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int,
        disc_hidden: Sequence[int] = (512, 512),
        adversarial_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not (
            isinstance(adversarial_weight, (int, float))
            and not isinstance(adversarial_weight, bool)
            and math.isfinite(adversarial_weight)
            and adversarial_weight >= 0
        ):
            raise ValueError(f"aae needs adversarial_weight: a finite number >= 0, got {adversarial_weight!r}")
        if any(p.requires_grad for p in prior.parameters()):
            raise ValueError(
                "aae matches its codes to a fixed prior: use a prior without trainable parameters (e.g. normal)"
            )
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.discriminator = CodeDiscriminator(latent_dim, disc_hidden)
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        self.adversarial_weight = float(adversarial_weight)
        prior.bind(encoder)

    def parameter_groups(self) -> dict[str, ParamGroup]:
        """The autoencoder (encoder and decoder) and the code discriminator (Adam betas (0.5, 0.999))."""
        unused = tuple(self.unused_parameters)
        autoencoder = [
            p for n, p in self.named_parameters() if n.startswith(("encoder.", "decoder.")) and not n.startswith(unused)
        ]
        return {
            "autoencoder": ParamGroup(autoencoder),
            "discriminator": ParamGroup(list(self.discriminator.parameters()), betas=(0.5, 0.999)),
        }

    def code(self, x: Tensor) -> Tensor:
        """z = Enc(x): the deterministic code."""
        return self.encoder(x)[0]

    def discriminator_loss(self, z: Tensor, z_prior: Tensor) -> Tensor:
        """-log D(z') - log(1 - D(z)) per image: prior samples z' are "real", codes z are "fake"."""
        logits = self.discriminator(torch.cat([z_prior, z])).float().view(2, -1)
        return F.softplus(-logits[0]) + F.softplus(logits[1])

    def adversarial(self, z: Tensor) -> Tensor:
        """The encoder's generator loss -log D(z) per image."""
        return F.softplus(-self.discriminator(z).float())

    def training_step(self, x: Tensor, y: Tensor | None, step: int, update) -> LossParts:
        """The discriminator on codes vs prior samples, then encoder and decoder on recon +
        adversarial_weight * generator loss. Returns recon + adversarial as evaluation does."""
        z_prior = self.prior.sample(len(x)).float()
        with torch.no_grad():
            z = self.code(x).float()
        d_loss = self.discriminator_loss(z, z_prior)
        update("discriminator", d_loss)

        z = self.code(x)
        recon = self.loss.nll(x.float(), self.decoder(z).float())
        adversarial = self.adversarial(z)
        update("autoencoder", recon + self.adversarial_weight * adversarial)
        recon, adversarial = recon.detach(), adversarial.detach()
        return LossParts(recon + adversarial, recon, adversarial, {"discriminator": d_loss.detach()})

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """recon = -log p(x | Dec(Enc(x))), kl = the generator loss -log D(Enc(x)), loss = their sum;
        the term `discriminator` is D's loss against one prior sample per image."""
        z = self.code(x)
        recon = self.loss.nll(x.float(), self.decoder(z).float())
        adversarial = self.adversarial(z)
        return LossParts(
            recon + adversarial,
            recon,
            adversarial,
            {"discriminator": self.discriminator_loss(z, self.prior.sample(len(x)).to(z.dtype))},
        )
