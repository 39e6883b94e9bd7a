"""Regularized autoencoder, RAE-L2 (Ghosh, Sajjadi, Vergari, Black, Schoelkopf, "From Variational to
Deterministic Autoencoders", ICLR 2020). A deterministic encoder E and decoder D minimise (their eq. 11)

    L_RAE = L_REC + beta * L_Z + lambda * L_REG,   L_Z = ||z||^2 / 2,   L_REG = ||theta_D||^2 (RAE-L2)

with z = E(x), L_REC the recipe's loss component's reconstruction of x from D(z) (`bce-kl`: binary
cross-entropy from logits summed over the pixels, like cifar-vae; the paper uses squared error), beta
`latent_weight`, lambda `decoder_l2` and theta_D every decoder parameter. L_REG is a term of the loss
(the same value for every image, so the batch mean holds it once), not an optimizer's weight decay:
one optimizer, and the test objective is the training objective. `kl`, reported as the regularizer
"regularization", is beta * L_Z + lambda * L_REG; `terms` splits it into `latent_l2` and `decoder_l2`.

Sampling uses the ex-post density estimation of the paper's section 4: a K = 10 component Gaussian
mixture with full covariances fitted to the training codes, here by online EM during training
(`mixture.py`; the paper fits it once after training). `terms["mixture_nll"]` is -log p(z) of the
evaluated images' codes under that mixture (nats), which shows how well it covers held-out codes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts
from vaezoo.components import Update
from vaezoo_defaults.common import check_int, is_discrete
from vaezoo_defaults.rae.mixture import OnlineGaussianMixture

MAX_LATENT = 512  # latent_dim bound: the mixture keeps a (latent_dim x latent_dim) covariance per component
MAX_COMPONENTS = 256


def _check_weight(key: str, value: object) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1e9):
        raise ValueError(f"rae needs {key} from 0 to 1e9, got {value!r}")
    return float(value)


class RAE(EncoderDecoderFamily):
    """RAE-L2: deterministic encoder (the encoder component's mean head) and decoder, reconstruction +
    beta ||z||^2 / 2 + lambda ||theta_decoder||^2, sampled from an online-EM Gaussian mixture."""

    objective = "rae"
    regularizer = "regularization"
    unused_parameters = ("encoder.logvar",)  # the Gaussian encoder's variance head: the encoder is deterministic

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int,
        latent_weight: float = 1.0,
        decoder_l2: float = 1e-2,
        mixture_components: int = 10,
        mixture_decay: float = 0.99,
    ) -> None:
        super().__init__()
        check_int("rae", "latent_dim", latent_dim, 1, MAX_LATENT)
        check_int("rae", "mixture_components", mixture_components, 1, MAX_COMPONENTS)
        if not (isinstance(mixture_decay, (int, float)) and 0.0 <= mixture_decay < 1.0):
            raise ValueError(f"rae needs mixture_decay from 0 to below 1, got {mixture_decay!r}")
        self.latent_weight, self.decoder_l2 = (
            _check_weight("latent_weight", latent_weight),
            _check_weight("decoder_l2", decoder_l2),
        )
        self.encoder, self.decoder, self.loss = encoder, decoder, loss
        self.in_shape = tuple(in_shape)
        self.latent_dim = latent_dim
        self.discrete = is_discrete(loss)
        self.mixture = OnlineGaussianMixture(components=mixture_components, dim=latent_dim, decay=float(mixture_decay))

    def decoder_norm(self) -> Tensor:
        """L_REG = ||theta_D||^2, the squared L2 norm of every decoder parameter (a scalar)."""
        return sum(p.float().pow(2).sum() for p in self.decoder.parameters())

    def _parts(self, x: Tensor, z: Tensor) -> LossParts:
        recon = self.loss.nll(x.float(), self.decoder(z).float())
        latent = self.latent_weight * 0.5 * z.float().pow(2).sum(1)
        decoder = (self.decoder_l2 * self.decoder_norm()).expand(len(x))
        terms = {"latent_l2": latent.detach(), "decoder_l2": decoder.detach()}
        if not self.training:
            terms["mixture_nll"] = -self.mixture.log_prob(z.detach())
        return LossParts(recon + latent + decoder, recon, latent + decoder, terms)

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """The RAE objective, eq. 11, per image (no schedule: the same at every step and at evaluation)."""
        return self._parts(x, self.encoder(x)[0])

    def training_step(self, x: Tensor, y: Tensor | None, step: int, update: Update) -> LossParts:
        """One step of the one optimizer, then one online-EM step of the mixture on this batch's codes
        (those of all ranks under torchrun)."""
        z = self.encoder(x)[0]
        parts = self._parts(x, z)
        update("model", parts.loss)
        self.mixture.update(z.detach())
        return parts

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`n` images decoded from codes drawn from the fitted mixture (its spread scaled by `temperature`)."""
        return self.decode(self.mixture.sample(n, temperature).to(self.mixture.s1.device))
