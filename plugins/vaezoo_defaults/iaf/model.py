"""VAE with an inverse autoregressive flow posterior (Kingma, Salimans, Jozefowicz, Chen, Sutskever and
Welling 2016, "Improved Variational Inference with Inverse Autoregressive Flow", eq. 10-14 and
Algorithm 1).

The encoder gives mu, sigma and a context h from the same features. Then

    z_0 = mu + sigma * eps,                    eps ~ N(0, I)
    [m_t, s_t] = MADE_t(z_{t-1}, h),           sigma_t = sigmoid(s_t)                   t = 1..T
    z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t                                      (eq. 10, 14)
    log q(z_T | x) = -sum_i (0.5 eps_i^2 + 0.5 log 2 pi + log sigma_i) - sum_t sum_i log sigma_t,i

(eq. 10's shift mu_t is (1 - sigma_t) * m_t, the paper's numerically stable form; s_t starts near +1
so that each step starts close to the identity, as the paper advises). Each MADE (Germain et al. 2015)
is masked so that [m_t, s_t]_i depends on z_{t-1,<i} in its ordering only (the Jacobian dz_t/dz_{t-1}
is triangular with diagonal sigma_t); the ordering reverses from one step to the next. The context
enters the first hidden layer unmasked. The KL has no closed form: `kl = log q(z_T|x) - log p(z_T)`
on the one sample, and `log_likelihood` is the importance-weighted bound (Burda et al. 2016) with
the flow posterior as the proposal."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts, Prior
from vaezoo.components import LOG_2PI
from vaezoo_defaults.common import (
    DECODE_BATCH,
    MAX_WIDTH,
    GaussianEncoder,
    check_int,
    check_widths,
    decoded_log_px,
    is_discrete,
    iw_bound,
)

MAX_STEPS = 64  # flow steps
S_BIAS = 1.0  # initial bias of s_t: sigma_t starts at sigmoid(1) ~ 0.73 (the paper: "+1 or +2")


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    mask: Tensor  # a buffer

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation: `forward(z, h) -> (m, s)`, each (B, D), where
    output i depends only on the inputs that come before i in `order` (and on the context h)."""

    def __init__(self, dim: int, context_dim: int, hidden: Sequence[int], *, reverse: bool = False) -> None:
        super().__init__()
        degrees_in = (
            torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)
        )  # position of each input in the ordering
        degrees = [degrees_in]
        for (
            width
        ) in hidden:  # a hidden unit of degree k in 0..D-1 sees the inputs of degrees <= k (0: the context only)
            degrees.append(torch.arange(width) % dim)
        self.layers = nn.ModuleList(
            MaskedLinear(later.unsqueeze(1) >= earlier.unsqueeze(0)) for earlier, later in zip(degrees, degrees[1:])
        )
        self.context = nn.Linear(context_dim, hidden[0])
        out_mask = degrees_in.unsqueeze(1) > degrees[-1].unsqueeze(0)  # strictly earlier inputs only
        self.out = MaskedLinear(torch.cat([out_mask, out_mask]))  # rows: m, then s
        with torch.no_grad():
            self.out.bias[dim:].fill_(S_BIAS)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        a = F.elu(self.layers[0](z) + self.context(h))
        for layer in self.layers[1:]:
            a = F.elu(layer(a))
        m, s = self.out(a).chunk(2, dim=-1)
        return m, s


class IAF(nn.Module):
    """T steps of inverse autoregressive flow with alternating orderings."""

    def __init__(self, dim: int, context_dim: int, hidden: Sequence[int], steps: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(MADE(dim, context_dim, hidden, reverse=t % 2 == 1) for t in range(steps))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """z_T and sum_t sum_i log sigma_t,i per row (the log-determinant of dz_T / dz_0)."""
        log_det = z.new_zeros(z.shape[:-1])
        for made in self.steps:
            m, s = made(z, h)
            sigma = torch.sigmoid(s)
            z = sigma * z + (1 - sigma) * m
            log_det = log_det + F.logsigmoid(s).sum(-1)
        return z, log_det


class IAFVAE(EncoderDecoderFamily):
    """A VAE whose posterior is a diagonal Gaussian followed by T IAF steps (see the module)."""

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
        steps: int = 2,
        context_dim: int = 64,
        hidden: Sequence[int] = (320, 320),
    ) -> None:
        super().__init__()
        check_int("iaf-vae", "steps", steps, 0, MAX_STEPS)
        check_int("iaf-vae", "context_dim", context_dim, 1, MAX_WIDTH)
        check_widths("iaf-vae", hidden)
        if len(hidden) < 1:
            raise ValueError("iaf-vae needs hidden: the widths of at least one hidden layer of each MADE")
        if not isinstance(encoder, GaussianEncoder):
            raise ValueError(
                "iaf-vae needs an encoder with features and linear heads (conv, mlp, resnet), got "
                f"{type(encoder).__name__}"
            )
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.in_shape = tuple(in_shape)
        self.latent_dim = latent_dim
        self.context = nn.Linear(
            encoder.mu.in_features, context_dim
        )  # h, eq. 10: a third head on the encoder's features
        self.flow = IAF(latent_dim, context_dim, list(hidden), steps)
        self.discrete = is_discrete(loss)
        prior.bind(encoder)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """mu, logvar and the context h of images `x`."""
        features = self.encoder.features(x)
        return self.encoder.mu(features), self.encoder.logvar(features), self.context(features)

    def flow_sample(self, mu: Tensor, logvar: Tensor, h: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """k samples z_T per image, (B, k, D), and log q(z_T | x) of each, (B, k)."""
        mu, logvar, h = (t.float().unsqueeze(1) for t in (mu, logvar, h))
        eps = torch.randn_like(mu.new_empty(mu.shape[0], k, mu.shape[2]))
        z, log_det = self.flow(mu + torch.exp(0.5 * logvar) * eps, h.expand(-1, k, -1))
        log_q = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1) - log_det
        return z, log_q

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """The one-sample negative ELBO: recon = -log p(x|z_T), kl = log q(z_T|x) - log p(z_T)."""
        mu, logvar, h = self.posterior(x)
        z, log_q = self.flow_sample(mu, logvar, h)
        z, log_q = z.squeeze(1), log_q.squeeze(1)
        recon = self.loss.nll(x.float(), self.decoder(z).float())
        kl = log_q - self.prior.log_prob(z).float()
        return LossParts(recon + kl, recon, kl)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """Importance-weighted estimate of log p(x) per image (nats), k flow-posterior samples."""
        mu, logvar, h = self.posterior(x)
        z, log_q = self.flow_sample(mu, logvar, h, k)
        z = z.flatten(0, 1)  # row i * k + j
        owner = torch.arange(len(x), device=x.device).repeat_interleave(k)
        log_ratio = log_q.flatten() - self.prior.log_prob(z).float()

        def nll(owner: Tensor, z: Tensor) -> Tensor:
            return self.loss.nll(x[owner].float(), self.decoder(z).float())

        log_px = decoded_log_px(nll, owner, z, DECODE_BATCH)
        return iw_bound(log_px.view(len(x), k), log_ratio.view(len(x), k))

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The flow applied to the Gaussian mean (eps = 0): a deterministic latent of each image."""
        mu, _, h = self.posterior(x)
        return self.flow(mu.float(), h.float())[0]
