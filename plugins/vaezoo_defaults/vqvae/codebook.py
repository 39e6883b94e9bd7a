"""The VQ-VAE codebook: nearest-code quantisation, codes learned by exponential moving averages of the
encoder outputs assigned to them (with Laplace smoothing of the counts), and restarts of dead codes.
All updates are tensor operations (no host sync), done only when the model asks for them in training;
under torch.distributed they use the statistics of the whole global batch."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor, nn


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A scope where autocast is off on `device` (its float32 tensors stay float32)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def sum_over_ranks(counts: Tensor, sums: Tensor) -> tuple[Tensor, Tensor]:
    """`counts` `(codes,)` and `sums` `(codes, dim)` summed over the ranks of a distributed job in
    one all-reduce (themselves in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return counts, sums
    both = torch.cat([counts.unsqueeze(1), sums], dim=1)
    dist.all_reduce(both)
    return both[:, 0], both[:, 1:]


class EMACodebook(nn.Module):
    """`codes` vectors of `dim` values. Buffers: `embedding` (the codes), `cluster_size` and `embed_sum`
    (the moving averages of each code's assignment count and of the sum of its assigned vectors) and
    `unused` (training steps since each code was last assigned). Codes start out dead, so the first
    training step sets those the first batch does not use to encoder outputs of that batch."""

    embedding: Tensor  # buffers (registered in __init__)
    cluster_size: Tensor
    embed_sum: Tensor
    unused: Tensor

    def __init__(
        self, *, codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5, restart_after: int = 10
    ) -> None:
        super().__init__()
        if codes < 2 or dim < 1:
            raise ValueError(f"the codebook needs codes >= 2 and dim >= 1, got {codes} and {dim}")
        if not 0.0 <= decay < 1.0 or eps <= 0 or restart_after < 1:
            raise ValueError(
                f"the codebook needs 0 <= decay < 1, eps > 0 and restart_after >= 1, got {decay}, {eps}, "
                f"{restart_after}"
            )
        self.codes, self.dim, self.decay, self.eps, self.restart_after = codes, dim, decay, eps, restart_after
        embedding = torch.randn(codes, dim)
        self.register_buffer("embedding", embedding)
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", embedding.clone())
        self.register_buffer("unused", torch.full((codes,), restart_after, dtype=torch.long))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean distance) of each row of `flat` `(N, dim)`, in
        float32 even under autocast: in bf16 the distances of a code's neighbours round to the same
        value, and 7-16% of the vectors went to a code that is not their nearest (measured)."""
        flat = flat.float()
        with full_precision(flat.device):
            distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.t() + self.embedding.pow(2).sum(1)
        return distances.argmin(1)

    def counts(self, index: Tensor) -> Tensor:
        """How often each code occurs in `index`, `(codes,)` float."""
        return torch.zeros(self.codes, device=index.device).index_add_(
            0, index, torch.ones(index.shape[0], device=index.device)
        )

    @torch.no_grad()
    def update(self, flat: Tensor, index: Tensor, counts: Tensor | None = None) -> None:
        """One training step: move each code toward the mean of the vectors of `flat` assigned to it
        (`index`) by the moving averages, then restart every code unused for `restart_after` steps as
        a random row of `flat`. Under torch.distributed every rank must call it at the same step: the
        counts and sums are those of the global batch (DDP then gives every rank rank 0's buffers).
        `counts`: `self.counts(index)` when the caller has it already."""
        flat = flat.detach().float()
        counts, sums = sum_over_ranks(
            self.counts(index) if counts is None else counts,
            torch.zeros_like(self.embed_sum).index_add_(0, index, flat),
        )
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (
            (self.cluster_size + self.eps) / (total + self.codes * self.eps) * total
        )  # Laplace smoothing: no code divides by ~0
        self.embedding.copy_(self.embed_sum / smoothed.unsqueeze(1))

        self.unused.copy_(torch.where(counts > 0, torch.zeros_like(self.unused), self.unused + 1))
        dead = self.unused >= self.restart_after
        candidates = flat[torch.randint(0, flat.shape[0], (self.codes,), device=flat.device)]
        self.embedding.copy_(torch.where(dead.unsqueeze(1), candidates, self.embedding))
        self.embed_sum.copy_(torch.where(dead.unsqueeze(1), candidates, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size))
        self.unused.copy_(torch.where(dead, torch.zeros_like(self.unused), self.unused))
