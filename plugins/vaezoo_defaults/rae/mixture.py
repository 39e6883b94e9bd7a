"""The RAE's ex-post density: a Gaussian mixture with full covariances over the codes, fitted by online
EM (stochastic-approximation EM on the sufficient statistics, Cappe & Moulines 2009) while the
autoencoder trains, because vaezoo gives a family no hook after training to fit it once on all codes.

Each training step takes the batch's codes, computes the responsibilities r_nk under the current
mixture (the E step) and moves the moving averages of the per-code sufficient statistics

    s0_k = E[r_k],   s1_k = E[r_k z],   s2_k = E[r_k z z^T]

a fraction (1 - decay) of the way to the batch's averages; the mixture is then (the M step)
w_k = s0_k / sum s0, mu_k = s1_k / s0_k, Sigma_k = s2_k / s0_k - mu_k mu_k^T (+ jitter I).
The statistics are buffers (saved with the weights, so resuming continues the same fit) and under
torch.distributed they are those of the global batch (one all-reduce), so every rank keeps the same
mixture. With decay 0.99 the mixture averages the codes of about the last 100 steps, which follows the
encoder as it changes; at the end of training it is the fit to the final steps' codes."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

JITTER = 1e-4  # added to every covariance's diagonal (a component fitted to one code stays invertible)
INIT_SEED = 0  # the offsets of the first means (identical on every rank without communication)


def sum_over_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """`tensors` summed over the ranks of a distributed job in one all-reduce (themselves otherwise)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


class OnlineGaussianMixture(nn.Module):
    """K full-covariance Gaussians over `dim`-dimensional codes. Buffers: `s0` `(K,)`, `s1` `(K, dim)`,
    `s2` `(K, dim, dim)` (the moving averages above) and `ready` (0 until the first update, which
    places the components around the first batch's codes). Before any update every component is
    N(0, I) with weight 1/K."""

    s0: Tensor  # buffers (registered in __init__)
    s1: Tensor
    s2: Tensor
    ready: Tensor

    def __init__(self, *, components: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the mixture needs 0 <= decay < 1, got {decay}")
        self.components, self.dim, self.decay = components, dim, decay
        self.register_buffer("s0", torch.full((components,), 1.0 / components))
        self.register_buffer("s1", torch.zeros(components, dim))
        self.register_buffer("s2", torch.eye(dim).expand(components, dim, dim) / components)
        self.register_buffer("ready", torch.zeros((), dtype=torch.long))

    def mixture(self) -> tuple[Tensor, Tensor, Tensor]:
        """The mixture from the statistics, in float64: log weights `(K,)`, means `(K, dim)` and the
        Cholesky factors of the covariances `(K, dim, dim)`."""
        s0, s1, s2 = self.s0.double(), self.s1.double(), self.s2.double()
        count = s0.clamp(min=1e-12)
        mean = s1 / count.unsqueeze(1)
        cov = s2 / count.view(-1, 1, 1) - mean.unsqueeze(2) * mean.unsqueeze(1)
        cov = 0.5 * (cov + cov.transpose(1, 2)) + JITTER * torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):  # rounding made a covariance indefinite: clip its eigenvalues
            values, vectors = torch.linalg.eigh(cov)
            cov = vectors @ torch.diag_embed(values.clamp(min=JITTER)) @ vectors.transpose(1, 2)
            chol = torch.linalg.cholesky(0.5 * (cov + cov.transpose(1, 2)))
        return torch.log(count / count.sum()), mean, chol

    def component_log_prob(self, z: Tensor) -> Tensor:
        """log w_k + log N(z_n; mu_k, Sigma_k) for codes `z` `(N, dim)`: `(N, K)` float64."""
        log_weight, mean, chol = self.mixture()
        diff = (z.double().unsqueeze(0) - mean.unsqueeze(1)).transpose(1, 2)  # (K, dim, N)
        solved = torch.linalg.solve_triangular(chol, diff, upper=False)
        mahalanobis = solved.pow(2).sum(1)  # (K, N)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        log_normal = -0.5 * (self.dim * math.log(2 * math.pi) + log_det.unsqueeze(1) + mahalanobis)
        return (log_weight.unsqueeze(1) + log_normal).t()

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) under the mixture, `(N,)` float32."""
        return torch.logsumexp(self.component_log_prob(z), dim=1).float()

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """`n` codes: a component by its weight, then its Gaussian with the spread scaled by `temperature`."""
        log_weight, mean, chol = self.mixture()
        which = torch.multinomial(log_weight.exp().float(), n, replacement=True)
        noise = torch.randn(n, self.dim, 1, device=mean.device, dtype=mean.dtype) * temperature
        return (mean[which] + (chol[which] @ noise).squeeze(2)).float()

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """One online EM step on the codes `z` `(N, dim)` (of the global batch under torch.distributed:
        every rank must call it at the same step)."""
        z = z.detach().double()
        if not bool(self.ready):
            self._start(z)
        resp = torch.softmax(self.component_log_prob(z), dim=1)  # E step, (N, K)
        n, s0, s1, s2 = sum_over_ranks(
            [
                torch.tensor([float(len(z))], dtype=z.dtype, device=z.device),
                resp.sum(0),
                resp.t() @ z,
                torch.einsum("nk,ni,nj->kij", resp, z, z),
            ]
        )
        rate = 1.0 - self.decay
        for buffer, batch in ((self.s0, s0), (self.s1, s1), (self.s2, s2)):
            buffer.copy_(((1 - rate) * buffer.double() + rate * batch / n).float())

    def _start(self, z: Tensor) -> None:
        """Components around the codes of the first (global) batch: its covariance, means at its mean
        plus fixed standard-normal offsets in its covariance's shape, equal weights."""
        n, total, outer = sum_over_ranks(
            [torch.tensor([float(len(z))], dtype=z.dtype, device=z.device), z.sum(0), z.t() @ z]
        )
        mean = total / n
        cov = outer / n - torch.outer(mean, mean) + JITTER * torch.eye(self.dim, dtype=z.dtype, device=z.device)
        chol = torch.linalg.cholesky_ex(0.5 * (cov + cov.t()))[0]
        offsets = torch.randn(
            self.components, self.dim, generator=torch.Generator().manual_seed(INIT_SEED), dtype=z.dtype
        ).to(z.device)
        means = mean + offsets @ chol.t()
        k = self.components
        self.s0.fill_(1.0 / k)
        self.s1.copy_((means / k).float())
        self.s2.copy_(((cov + means.unsqueeze(2) * means.unsqueeze(1)) / k).float())
        self.ready.fill_(1)
