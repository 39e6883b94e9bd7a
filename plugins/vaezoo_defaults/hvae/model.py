"""Top-down hierarchical VAE in the style of the ladder VAE, NVAE and VDVAE (Sønderby et al. 2016, Vahdat &
Kautz 2020, Child 2021), written from the papers' descriptions.

A bottom-up pass of residual cells gives an activation at every resolution. The top-down pass starts
from a learned state at the lowest latent resolution; at each latent level l it predicts the prior
p(z_l | z_<l) from the state, the posterior q(z_l | x, z_<l) from the state merged with the bottom-up
activation of the same resolution, and adds a projection of z_l back into the state; residual cells
and nearest-neighbour upsampling lead to the next level and finally to the image resolution, where the
recipe's loss (a discretized logistic mixture) gives p(x | z). Every z_l is a Gaussian map of
`latent_dim` channels at its resolution (the recipe's top-level `latent_dim`); standard deviations
are softplus + a floor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo import Loss, LossParts, Model
from vaezoo.components import LOG_2PI
from vaezoo_defaults.common import MAX_LAYERS, MAX_WIDTH, check_int

MIN_STD = 1e-3  # floor of every prior and posterior standard deviation
MAX_ROWS = 512  # image-samples decoded at once by log_likelihood (bounds its memory)


class Cell(nn.Module):
    """Bottleneck conv cell: 1x1 -> 3x3 -> 3x3 -> 1x1 with GELUs; residual when in == out channels.
    The last convolution of a residual cell starts scaled by `out_scale` (keeps a deep stack stable)."""

    def __init__(
        self, channels: int, mid: int, out: int | None = None, *, residual: bool = True, out_scale: float = 1.0
    ) -> None:
        super().__init__()
        out = channels if out is None else out
        self.residual = residual and out == channels
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(channels, mid, 1),
                nn.Conv2d(mid, mid, 3, padding=1),
                nn.Conv2d(mid, mid, 3, padding=1),
                nn.Conv2d(mid, out, 1),
            ]
        )
        with torch.no_grad():
            self.convs[-1].weight.mul_(out_scale)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = conv(F.gelu(h))
        return x + h if self.residual else h


@dataclass
class Level:
    """One latent level of a top-down pass: the z used, the prior's and (when x was given) the
    posterior's mean and standard deviation, each (B, latent_dim, r, r)."""

    z: Tensor
    p_mean: Tensor
    p_std: Tensor
    q_mean: Tensor | None = None
    q_std: Tensor | None = None


def _std(raw: Tensor) -> Tensor:
    return F.softplus(raw) + MIN_STD


def gaussian_kl(q_mean: Tensor, q_std: Tensor, p_mean: Tensor, p_std: Tensor) -> Tensor:
    """KL(N(q) || N(p)) per image, summed over channels and positions."""
    kl = torch.log(p_std / q_std) + (q_std.pow(2) + (q_mean - p_mean).pow(2)) / (2 * p_std.pow(2)) - 0.5
    return kl.flatten(1).sum(1)


def gaussian_log_density(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(z; mean, std^2) per image, summed over channels and positions."""
    return (-0.5 * (LOG_2PI + ((z - mean) / std).pow(2)) - torch.log(std)).flatten(1).sum(1)


class HierarchicalVAE(Model):
    """Top-down hierarchical VAE: Gaussian latent maps of `latent_dim` channels at the resolutions
    `levels` (ascending), a bottom-up encoder and a top-down decoder of residual bottleneck cells
    (`blocks` per resolution, `width` channels, bottleneck `width // 4`), the recipe's loss as p(x | z).

    Training only (`step` not None): the KL is weighted by min(1, (step + 1) / kl_warmup_steps) and each
    level's KL per image counts at least `free_bits` nats per latent channel (latent_dim) of that level.

    The training forward never reads a value back to the host and keeps no Python state; its KL warm-up
    is the family's own `kl_weight(step)`, which vaezoo's CUDA-graph step waits for (the warm-up steps run
    eagerly, the graph is captured once the weight is 1), so it declares `cuda_graph`."""

    cuda_graph = True

    def __init__(
        self,
        *,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int = 8,
        levels: Sequence[int] = (4, 8, 16),
        width: int = 128,
        blocks: int = 2,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width_px = (int(d) for d in in_shape)
        if not (isinstance(levels, Sequence) and not isinstance(levels, str) and 1 <= len(levels) <= 11):
            raise ValueError(
                f"hvae levels must be a list of 1 to 11 distinct ascending powers of two, got {type(levels).__name__}"
            )
        levels = tuple(int(r) for r in levels)
        if height != width_px or height & (height - 1):
            raise ValueError(f"hvae needs square images with a power-of-two side, got {height}x{width_px}")
        if not levels or list(levels) != sorted(set(levels)) or any(r < 1 or r > height or r & (r - 1) for r in levels):
            raise ValueError(f"hvae levels must be distinct ascending powers of two up to {height}, got {levels}")
        for key, value, low, high in (
            ("width", width, 8, MAX_WIDTH),
            ("latent_dim", latent_dim, 1, MAX_WIDTH),
            ("blocks", blocks, 0, MAX_LAYERS),
            ("kl_warmup_steps", kl_warmup_steps, 0, 2**62),
        ):
            check_int("hvae", key, value, low, high)
        if not free_bits >= 0:
            raise ValueError(f"hvae needs free_bits >= 0, got {free_bits}")
        self.loss, self.in_shape, self.levels = loss, (channels, height, width_px), levels
        self.latent_dim, self.kl_warmup_steps, self.free_bits = int(latent_dim), int(kl_warmup_steps), float(free_bits)
        self.discrete = bool(getattr(loss, "discrete", False))
        mid = max(4, width // 4)
        # resolutions from the image down to the top level, each with its cells
        self.resolutions = [height >> i for i in range(int(math.log2(height // levels[0])) + 1)]
        n_cells = len(self.resolutions) * (blocks + 1)
        scale = 1 / math.sqrt(max(1, n_cells))
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.up_cells = nn.ModuleDict(
            {
                str(r): nn.Sequential(*[Cell(width, mid, out_scale=scale) for _ in range(blocks)])
                for r in self.resolutions
            }
        )
        self.start = nn.Parameter(torch.zeros(1, width, levels[0], levels[0]))
        self.prior_nets = nn.ModuleDict(
            {str(r): Cell(width, mid, 2 * latent_dim + width, residual=False) for r in levels}
        )
        self.post_nets = nn.ModuleDict({str(r): Cell(2 * width, mid, 2 * latent_dim, residual=False) for r in levels})
        self.z_proj = nn.ModuleDict({str(r): nn.Conv2d(latent_dim, width, 1) for r in levels})
        self.down_cells = nn.ModuleDict(
            {
                str(r): nn.Sequential(*[Cell(width, mid, out_scale=scale) for _ in range(blocks)])
                for r in self.resolutions
            }
        )
        self.out = nn.Conv2d(width, channels * loss.params_per_channel, 3, padding=1)
        with torch.no_grad():  # the prior nets' state update and the z projections start small
            for r in levels:
                self.prior_nets[str(r)].convs[-1].weight[2 * latent_dim :].mul_(scale)
                self.z_proj[str(r)].weight.mul_(scale)

    # the two passes

    def bottom_up(self, x: Tensor) -> dict[int, Tensor]:
        """The encoder's activation at every latent resolution."""
        h = self.stem(2 * x - 1)
        acts: dict[int, Tensor] = {}
        for r in self.resolutions:
            if h.shape[-1] > r:
                h = F.avg_pool2d(h, 2)
            h = self.up_cells[str(r)](h)
            if r in self.levels:
                acts[r] = h
        return acts

    def top_down(
        self,
        n: int,
        acts: dict[int, Tensor] | None = None,
        zs: Sequence[Tensor | None] = (),
        *,
        temperature: float = 1.0,
        use_mean: bool = False,
    ) -> tuple[Tensor, list[Level]]:
        """The decoder's output (B, C * params_per_channel, H, W) and every level. z_l is `zs[l]` when
        given, else drawn from the posterior when `acts` (bottom-up activations) are given (its mean
        with `use_mean`), else from the prior with its std scaled by `temperature`."""
        h = self.start.expand(n, -1, -1, -1)
        levels: list[Level] = []
        for r in reversed(self.resolutions):
            if h.shape[-1] < r:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            if r in self.levels:
                i = len(levels)
                p_mean, p_raw, update = self.prior_nets[str(r)](h).split(
                    [self.latent_dim, self.latent_dim, h.shape[1]], dim=1
                )
                p_std = _std(p_raw)
                h = h + update
                level = Level(z=p_mean, p_mean=p_mean, p_std=p_std)
                if acts is not None:
                    q_mean, q_raw = self.post_nets[str(r)](torch.cat([h, acts[r]], dim=1)).chunk(2, dim=1)
                    level.q_mean, level.q_std = q_mean, _std(q_raw)
                    level.z = q_mean if use_mean else q_mean + level.q_std * torch.randn_like(q_mean)
                elif not use_mean:
                    level.z = p_mean + temperature * p_std * torch.randn_like(p_mean)
                if i < len(zs) and zs[i] is not None:
                    level.z = zs[i]
                h = h + self.z_proj[str(r)](level.z)
                levels.append(level)
            h = self.down_cells[str(r)](h)
        return self.out(F.gelu(h)), levels

    def level_names(self) -> list[str]:
        return [f"kl_{r}x{r}" for r in self.levels]

    # the Model interface

    def kl_weight(self, step: int | None) -> float:
        """The KL weight of the training objective at `step` (1 for evaluation)."""
        if step is None or self.kl_warmup_steps == 0:
            return 1.0
        return min(1.0, (step + 1) / self.kl_warmup_steps)

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """Negative ELBO per image (one posterior sample, analytic KL per level); `terms` holds the KL
        of each level. Training (`step` not None) applies the KL warm-up and free bits to `loss`."""
        out, levels = self.top_down(len(x), self.bottom_up(x))
        recon = self.loss.nll(x.float(), out.float())
        kls = [gaussian_kl(lv.q_mean.float(), lv.q_std.float(), lv.p_mean.float(), lv.p_std.float()) for lv in levels]
        kl = torch.stack(kls).sum(0)
        terms = dict(zip(self.level_names(), kls))
        if step is None:
            return LossParts(recon + kl, recon, kl, terms)
        floor = self.free_bits * self.latent_dim
        trained_kl = torch.stack([k.clamp(min=floor) for k in kls]).sum(0) if floor > 0 else kl
        return LossParts(recon + self.kl_weight(step) * trained_kl, recon, kl, terms)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`n` images from the priors, top-down (prior stds scaled by `temperature`), as the likelihood's mean."""
        out, _ = self.top_down(n, temperature=temperature)
        return self.loss.mean_image(out).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Images decoded along the posterior means of `x`."""
        out, _ = self.top_down(len(x), self.bottom_up(x), use_mean=True)
        return self.loss.mean_image(out).clamp(0, 1)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """Importance-weighted log p(x) per image (nats) with k hierarchical posterior samples:
        log p(x|z) + sum_l [log p(z_l|z_<l) - log q(z_l|x,z_<l)], decoded about MAX_ROWS image-samples at a time."""
        acts = self.bottom_up(x)
        per_chunk = max(1, MAX_ROWS // len(x))
        weights = []
        for first in range(0, k, per_chunk):
            m = min(per_chunk, k - first)
            rep = {r: a.repeat(m, 1, 1, 1) for r, a in acts.items()}  # row j * B + i: sample j of image i
            out, levels = self.top_down(len(x) * m, rep)
            log_w = -self.loss.nll(x.float().repeat(m, 1, 1, 1), out.float())
            for lv in levels:
                log_w = log_w + gaussian_log_density(lv.z.float(), lv.p_mean.float(), lv.p_std.float())
                log_w = log_w - gaussian_log_density(lv.z.float(), lv.q_mean.float(), lv.q_std.float())
            weights.append(log_w.view(m, len(x)))
        return torch.logsumexp(torch.cat(weights), dim=0) - math.log(k)
