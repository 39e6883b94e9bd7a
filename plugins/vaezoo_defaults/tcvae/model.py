"""beta-TCVAE (Chen, Li, Grosse and Duvenaud 2018, "Isolating Sources of Disentanglement in Variational
Autoencoders"). The KL term of the ELBO, averaged over the data, splits (eq. 2) into

    E_p(n)[KL(q(z|n) || p(z))] = I_q(z; n) + KL(q(z) || prod_j q(z_j)) + sum_j KL(q(z_j) || p(z_j))
                                 index-code MI   total correlation (TC)   dimension-wise KL (DWKL)

and training minimises  recon + alpha * MI + beta * TC + gamma * DWKL  (eq. 4 with the paper's
alpha = gamma = 1; beta = 6 by default). With a posterior sample z_i of each image x_i of a batch,
the per-image estimates are

    MI_i   = log q(z_i | x_i) - log q(z_i)
    TC_i   = log q(z_i) - sum_j log q(z_ij)
    DWKL_i = sum_j log q(z_ij) - log p(z_i)

and they add up to log q(z_i | x_i) - log p(z_i), the one-sample KL: with alpha = beta = gamma = 1 the
objective is exactly the one-sample negative ELBO. The aggregate posterior q(z) = 1/N sum_n q(z|x_n)
and its marginals q(z_j) are estimated from the batch:

- `estimator = "mss"` (default; minibatch stratified sampling, appendix C.2): q(z_i) ~ sum_k W_ik
  q(z_i | x_k) with W_ii = 1/N, one other image (the next one) at (N - M) / (N M) and the remaining
  ones at 1/M, M = B - 1. An unbiased estimate of the density q(z_i) when the batch's other images are
  a uniform draw of the data set (its log, and so MI and TC, are biased by Jensen's inequality).
- `estimator = "mws"` (minibatch weighted sampling, section 4.1 / appendix C.1):
  log q(z_i) ~ log sum_k q(z_i | x_k) - log(N B). As the paper (and its code) writes it, this is low
  by about log N even when the batch is the whole data set: the constants shift the reported MI up by
  ~log N, TC up by ~(D - 1) log N and DWKL down by ~D log N (gradients are unaffected).

N is the recipe key `dataset_size` (default 50000, CIFAR-10's training set; it is not derived from the
data, so a run on `--limit n` images should set it to n). A batch larger than N is estimated with
N = B. `kl` is the closed-form (or the prior's) KL at every step, and at evaluation (`step=None`)
`loss = recon + kl`, the negative ELBO; `terms` report the per-image "mi", "tc" and "dwkl" estimates
(their batch means are the batch's estimates). DWKL is a sum of per-dimension KLs only for a
factorised prior such as `normal`; for any prior the three still add up to log q(z|x) - log p(z)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaezoo import EncoderDecoderFamily, Loss, LossParts, Prior
from vaezoo.components import LOG_2PI, gaussian_log_prob
from vaezoo_defaults.common import DECODE_BATCH, importance_terms, is_discrete, iw_bound

ESTIMATORS = ("mss", "mws")
ROW_CHUNK = 256  # images i whose B x B x D pairwise densities are held at once (bounds memory)
MAX_DATASET_SIZE = 10**12


def log_importance_weights(batch: int, dataset_size: int, device: torch.device | None = None) -> Tensor:
    """log W (B, B) of minibatch stratified sampling (Chen et al. 2018, appendix C.2): row i weighs the
    batch's posteriors for an estimate of q(z_i): 1/N for image i itself, (N - M) / (N M) for image
    i + 1 (cyclically) and 1/M for the others, M = B - 1 (each row sums to 1). The index arithmetic is
    written out: the official code's `W[M - 1, 0]` misses the last row's stratum weight."""
    if batch == 1:
        return torch.zeros(1, 1, device=device)
    n, m = float(dataset_size), float(batch - 1)
    weights = torch.full((batch, batch), 1 / m, device=device, dtype=torch.float64)
    rows = torch.arange(batch, device=device)
    weights[rows, rows] = 1 / n
    weights[rows, (rows + 1) % batch] = (n - m) / (n * m)
    return weights.log().float()


def decompose(
    z: Tensor, mu: Tensor, logvar: Tensor, log_pz: Tensor, dataset_size: int, estimator: str = "mss"
) -> dict[str, Tensor]:
    """Per-image estimates (each (B,)) of the KL decomposition for posterior samples `z` of the batch
    with Gaussian posteriors (mu, logvar): "mi", "tc", "dwkl", and the log densities they come from
    ("log_qzx" = log q(z_i|x_i), "log_qz", "log_prod_qz"); `log_pz` is log p(z_i)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"beta-tcvae estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    batch = len(z)
    n = max(int(dataset_size), batch)
    if estimator == "mss":
        log_w = log_importance_weights(batch, n, z.device)
    else:
        log_w = torch.full((batch, batch), -math.log(n * batch), device=z.device)
    inv_var = torch.exp(-logvar)
    log_qz, log_prod_qz = [], []
    for first in range(0, batch, ROW_CHUNK):
        rows = slice(first, first + ROW_CHUNK)
        # log q(z_ij | x_k) for the rows' samples i against every image k: (rows, B, D)
        pair = -0.5 * (
            LOG_2PI + logvar.unsqueeze(0) + (z[rows].unsqueeze(1) - mu.unsqueeze(0)).pow(2) * inv_var.unsqueeze(0)
        )
        weight = log_w[rows].unsqueeze(2)
        log_qz.append(torch.logsumexp(pair.sum(2) + log_w[rows], dim=1))
        log_prod_qz.append(torch.logsumexp(pair + weight, dim=1).sum(1))
    qz, prod_qz = torch.cat(log_qz), torch.cat(log_prod_qz)
    log_qzx = gaussian_log_prob(z, mu, logvar)
    log_pz = log_pz.float()
    return {
        "mi": log_qzx - qz,
        "tc": qz - prod_qz,
        "dwkl": prod_qz - log_pz,
        "log_qzx": log_qzx,
        "log_qz": qz,
        "log_prod_qz": prod_qz,
    }


class BetaTCVAE(EncoderDecoderFamily):
    """A Gaussian-latent VAE trained on recon + alpha * MI + beta * TC + gamma * DWKL (see the module)."""

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
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        dataset_size: int = 50000,
        estimator: str = "mss",
    ) -> None:
        super().__init__()
        for key, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
                raise ValueError(f"beta-tcvae needs {key} a finite number >= 0, got {value!r}")
        if (
            isinstance(dataset_size, bool)
            or not isinstance(dataset_size, int)
            or not 1 <= dataset_size <= MAX_DATASET_SIZE
        ):
            raise ValueError(f"beta-tcvae needs dataset_size from 1 to {MAX_DATASET_SIZE}, got {dataset_size!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"beta-tcvae estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.in_shape = tuple(in_shape)
        self.latent_dim = latent_dim
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.dataset_size, self.estimator = int(dataset_size), estimator
        self.discrete = is_discrete(loss)
        prior.bind(encoder)

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """Training (`step` an int): recon + alpha MI + beta TC + gamma DWKL on one posterior sample.
        Evaluation (`step=None`): recon + the prior's KL (closed form for `normal`), the negative ELBO."""
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.loss.nll(x.float(), self.decoder(z).float())
        kl = self.prior.kl(mu.float(), logvar.float(), z.float())
        parts = decompose(z, mu, logvar, self.prior.log_prob(z.float()), self.dataset_size, self.estimator)
        terms = {key: parts[key] for key in ("mi", "tc", "dwkl")}
        if step is None:
            return LossParts(recon + kl, recon, kl, {key: value.detach() for key, value in terms.items()})
        loss = recon + self.alpha * terms["mi"] + self.beta * terms["tc"] + self.gamma * terms["dwkl"]
        return LossParts(loss, recon, kl, {key: value.detach() for key, value in terms.items()})

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """Importance-weighted estimate of log p(x) per image (nats) with k posterior samples."""

        def nll(owner: Tensor, z: Tensor) -> Tensor:
            return self.loss.nll(x[owner].float(), self.decoder(z).float())

        return iw_bound(*importance_terms(x, *self.encoder(x), k, self.prior, nll, DECODE_BATCH))
