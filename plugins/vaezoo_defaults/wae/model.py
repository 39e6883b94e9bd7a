"""Wasserstein auto-encoder with the MMD penalty, WAE-MMD (Tolstikhin, Bousquet, Gelly, Schoelkopf,
"Wasserstein Auto-Encoders", ICLR 2018, Algorithm 2). It minimises (their eq. 4)

    D_WAE = E_x E_{z ~ Q(z|x)} c(x, G(z)) + lambda * MMD_k(Q_Z, P_Z)

with a deterministic encoder Q(z|x) = delta(z - E(x)) (the paper allows it; the encoder component's
mean head is E, its log-variance head is unused), the recipe's loss component's reconstruction as the
cost c (`bce-kl`: binary cross-entropy from logits summed over the pixels, like cifar-vae, instead of
the paper's squared error), and the unbiased U-statistic estimate of MMD_k^2 over the batch's codes
and as many prior samples, with the inverse multiquadratics kernel k(x, y) = C / (C + ||x - y||^2),
C = 2 d_z sigma_z^2 (sigma_z^2 = 1: the recipe's prior must be N(0, I), e.g. `normal`).

The MMD is a statistic of the whole batch, not a sum over images: the per-image `loss` is each image's
cost plus lambda * MMD (the same value for every image), so the batch mean of `loss` is the batch's
objective. `kl` (reported as the regularizer "mmd") is that penalty lambda * MMD, and `terms["mmd"]`
the estimate MMD^2 itself. One optimizer. Under torchrun the training step gathers the codes and the
prior samples of all ranks (differentiably), so the penalty is the global batch's, as in one process
with the whole batch. Evaluation estimates the MMD per evaluation batch on one rank's shard: the
U-statistic is unbiased at any batch size, so the mean over batches estimates the same MMD^2 (with
more noise for small batches; a batch of one image has no pair and counts 0)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts, Prior
from vaezoo.components import Update
from vaezoo_defaults.common import is_discrete
from vaezoo_defaults.wae.mmd import gather_rows, mmd_imq


class WAE(EncoderDecoderFamily):
    """WAE-MMD: deterministic encoder (the encoder component's mean), decoder, the loss component's
    reconstruction as the cost, lambda (`mmd_weight`) times the IMQ-kernel MMD to the prior."""

    objective = "wae-mmd"
    regularizer = "mmd"
    unused_parameters = ("encoder.logvar",)  # the Gaussian encoder's variance head: the encoder is deterministic

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int,
        mmd_weight: float = 100.0,
    ) -> None:
        super().__init__()
        if not (isinstance(mmd_weight, (int, float)) and not isinstance(mmd_weight, bool) and 0 <= mmd_weight <= 1e9):
            raise ValueError(f"wae needs mmd_weight from 0 to 1e9, got {mmd_weight!r}")
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.in_shape = tuple(in_shape)
        self.latent_dim = latent_dim
        self.mmd_weight = float(mmd_weight)
        self.kernel_c = 2.0 * latent_dim * 1.0  # C = 2 d_z sigma_z^2 for the N(0, I) prior
        self.discrete = is_discrete(loss)
        prior.bind(encoder)

    def _parts(self, x: Tensor, z: Tensor, codes: Tensor, prior_samples: Tensor) -> LossParts:
        """Per-image LossParts: the cost of reconstructing `x` from its codes `z`, plus lambda * the
        MMD between `codes` (the batch's, maybe gathered over ranks) and `prior_samples`."""
        recon = self.loss.nll(x.float(), self.decoder(z).float())
        mmd = mmd_imq(codes.float(), prior_samples.float(), self.kernel_c)
        penalty = (self.mmd_weight * mmd).expand(len(x))
        return LossParts(recon + penalty, recon, penalty, {"mmd": mmd.detach().expand(len(x))})

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """The WAE objective on this batch alone (no schedule: the same at every step and at evaluation)."""
        z = self.encoder(x)[0]
        return self._parts(x, z, z, self.prior.sample(len(z)))

    def training_step(self, x: Tensor, y: Tensor | None, step: int, update: Update) -> LossParts:
        """One Adam step on the global batch's objective: codes and prior samples gathered over ranks."""
        z = self.encoder(x)[0]
        parts = self._parts(x, z, gather_rows(z), gather_rows(self.prior.sample(len(z)).detach()))
        update("model", parts.loss)
        return parts
