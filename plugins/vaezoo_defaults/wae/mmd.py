"""The MMD penalty of WAE-MMD (Tolstikhin et al. 2018, Algorithm 2) with the inverse multiquadratics
kernel, and a differentiable gather of rows over the ranks of a torch.distributed job, so that under
torchrun the penalty is the one of the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def imq_kernel(a: Tensor, b: Tensor, c: float) -> Tensor:
    """k(a_i, b_j) = C / (C + ||a_i - b_j||^2) for rows of `a` `(n, d)` and `b` `(m, d)`: `(n, m)`."""
    squared = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.t()).clamp(min=0)
    return c / (c + squared)


def mmd_imq(z: Tensor, prior: Tensor, c: float) -> Tensor:
    """The unbiased U-statistic estimate of MMD_k^2 between the codes `z` `(n, d)` and prior samples
    `prior` `(m, d)` (Algorithm 2 of the paper, there with m = n):

        1/(m(m-1)) sum_{l != j} k(p_l, p_j) + 1/(n(n-1)) sum_{l != j} k(z_l, z_j) - 2/(nm) sum_{l, j} k(z_l, p_j)

    A scalar (differentiable in `z`); 0 when either side has fewer than two rows (no pair to compare)."""
    n, m = z.shape[0], prior.shape[0]
    if n < 2 or m < 2:
        return z.sum() * 0.0
    k_zz, k_pp, k_zp = imq_kernel(z, z, c), imq_kernel(prior, prior, c), imq_kernel(z, prior, c)
    within_z = (k_zz.sum() - k_zz.diagonal().sum()) / (n * (n - 1))
    within_p = (k_pp.sum() - k_pp.diagonal().sum()) / (m * (m - 1))
    return within_p + within_z - 2 * k_zp.mean()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order (ranks may hold different numbers of rows).
    Backward: the gradient of every rank's copy summed over ranks (one all-reduce), this rank's rows."""

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = torch.zeros(world, dtype=torch.long, device=rows.device)
        sizes[rank] = rows.shape[0]
        dist.all_reduce(sizes)
        counts = sizes.tolist()
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, rank
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        first = sum(ctx.counts[: ctx.rank])
        return grad[first : first + ctx.counts[ctx.rank]]


def gather_rows(rows: Tensor) -> Tensor:
    """The rows of every rank of a torch.distributed job in rank order (`rows` itself in a single
    process). Differentiable: each rank's rows receive the sum over ranks of the gradients of their
    copies. Every rank must call it at the same point (and backward through it, if any does)."""
    if not _distributed():
        return rows
    return _GatherRows.apply(rows)
