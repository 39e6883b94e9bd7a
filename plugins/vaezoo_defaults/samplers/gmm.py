"""A full-covariance Gaussian mixture fitted by expectation-maximisation to a trained model's codes:
the ex-post density estimation of Ghosh et al. (2020, RAE paper, section 4: 10 components), usable
with any family that can `encode` and `decode`.

EM starts from k-means++ centres (drawn with `seed`), every covariance the codes' own, equal weights,
and runs until the mean log-likelihood of the codes improves by less than `tol` nats per code (or
`max_iter` rounds). `reg` is added to every covariance's diagonal, so that a component that holds few
codes stays invertible. All of it is float64 on the CPU."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaezoo.components import Sampler
from vaezoo_defaults.common import check_int

MAX_COVARIANCE_ENTRIES = 2**26  # n_components * dim * dim: 512 MiB of float64 at most


class GaussianMixtureSampler(Sampler):
    """Full-covariance Gaussian mixture fitted by EM to the training codes (Ghosh et al. 2020)."""

    def __init__(
        self,
        *,
        dim: int,
        n_components: int = 10,
        max_iter: int = 300,
        tol: float = 1e-5,
        reg: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__(dim=dim)
        check_int("gmm", "n_components", n_components, 1, 1000)
        check_int("gmm", "max_iter", max_iter, 1, 100_000)
        check_int("gmm", "seed", seed, 0, 2**63 - 1)
        if n_components * dim * dim > MAX_COVARIANCE_ENTRIES:
            raise ValueError(
                f"gmm: {n_components} covariances of codes of size {dim} are too large "
                f"({n_components * dim * dim:,} numbers, at most {MAX_COVARIANCE_ENTRIES:,}): use fewer components "
                "or a sampler for large codes"
            )
        for key, value in (("tol", tol), ("reg", reg)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"gmm: {key} must be a finite number >= 0, got {value!r}")
        self.n_components, self.max_iter, self.tol, self.reg, self.seed = n_components, max_iter, tol, reg, seed
        k = n_components
        self.register_buffer("log_weights", torch.full((k,), -math.log(k), dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, dim, dtype=torch.float64))
        self.register_buffer("scale_tril", torch.eye(dim, dtype=torch.float64).repeat(k, 1, 1))
        self.iterations = 0

    def component_log_probs(self, codes: Tensor) -> Tensor:
        """`(N, K)`: log w_k + log N(code | mu_k, Sigma_k)."""
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        squared = torch.stack(
            [  # one component at a time: (N, D) at most in memory, whatever K is
                torch.linalg.solve_triangular(tril, (codes - mean).T, upper=False).pow(2).sum(0)
                for mean, tril in zip(self.means, self.scale_tril)
            ],
            dim=1,
        )
        return self.log_weights - half_log_det - 0.5 * (squared + self.dim * math.log(2 * math.pi))

    def log_prob(self, codes: Tensor) -> Tensor:
        """`(N,)` log-density of the mixture at `codes`."""
        return torch.logsumexp(self.component_log_probs(codes.to(torch.float64)), dim=1)

    def _starting_means(self, codes: Tensor) -> Tensor:
        """k-means++ centres (Arthur & Vassilvitskii 2007), drawn with this sampler's seed."""
        generator = torch.Generator().manual_seed(self.seed)
        centres = [codes[torch.randint(len(codes), (1,), generator=generator)].squeeze(0)]
        nearest = (codes - centres[0]).pow(2).sum(1)
        for _ in range(1, self.n_components):
            weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
            centres.append(codes[torch.multinomial(weights, 1, generator=generator)].squeeze(0))
            nearest = torch.minimum(nearest, (codes - centres[-1]).pow(2).sum(1))
        return torch.stack(centres)

    def fit(self, codes: Tensor) -> None:
        codes = codes.to(torch.float64)
        if len(codes) < self.n_components:
            raise ValueError(f"gmm: {self.n_components} components need at least as many codes, got {len(codes)}")
        eye = torch.eye(self.dim, dtype=torch.float64)
        spread = torch.cov(codes.T).reshape(self.dim, self.dim) + self.reg * eye
        self.means = self._starting_means(codes)
        self.scale_tril = torch.linalg.cholesky(spread).repeat(self.n_components, 1, 1)
        self.log_weights = torch.full_like(self.log_weights, -math.log(self.n_components))
        previous = -math.inf
        for iteration in range(1, self.max_iter + 1):
            self.iterations = iteration
            joint = self.component_log_probs(codes)  # E step
            total = torch.logsumexp(joint, dim=1, keepdim=True)
            mean_log_likelihood = total.mean().item()
            responsibilities = (joint - total).exp()  # (N, K)
            counts = responsibilities.sum(0).clamp_min(1e-12)  # M step
            self.log_weights = (counts / len(codes)).log()
            self.means = responsibilities.T @ codes / counts[:, None]
            covariances = torch.stack(
                [
                    (weight[:, None] * (codes - mean)).T @ (codes - mean)
                    for weight, mean in zip(responsibilities.T, self.means)
                ]
            )
            self.scale_tril = torch.linalg.cholesky(covariances / counts[:, None, None] + self.reg * eye)
            if mean_log_likelihood - previous < self.tol:
                break
            previous = mean_log_likelihood

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        component = torch.multinomial(self.log_weights.exp(), n, replacement=True)
        noise = torch.randn(n, self.dim, 1, dtype=torch.float64)
        return self.means[component] + temperature * (self.scale_tril[component] @ noise).squeeze(-1)
