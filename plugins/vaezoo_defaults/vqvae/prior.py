"""Priors over a grid of code indices for the VQ-VAE: uniform, or a small gated PixelCNN with separate
vertical and horizontal stacks (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"), which has no blind spot: each position sees every position before it in raster order."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UniformCodePrior(nn.Module):
    """p(codes) = K ** -(H * W): every code equally likely at every position."""

    def __init__(self, *, codes: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.codes, self.grid = codes, grid

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p of `(B, H, W)` code indices, per image."""
        return torch.full((codes.shape[0],), -math.prod(self.grid) * math.log(self.codes), device=codes.device)

    @torch.no_grad()
    def sample(self, n: int, device: torch.device, temperature: float = 1.0) -> Tensor:
        return torch.randint(0, self.codes, (n, *self.grid), device=device)


def _shift_down(t: Tensor) -> Tensor:
    """Row i gets row i - 1 (zeros in row 0)."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1, :]


def _shift_right(t: Tensor) -> Tensor:
    """Column j gets column j - 1 (zeros in column 0)."""
    return F.pad(t, (1, 0, 0, 0))[:, :, :, :-1]


def _gate(t: Tensor) -> Tensor:
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer with a vertical stack (rows <= i, 2 x 3 kernel) and a horizontal stack (row i,
    columns <= j, 1 x 2 kernel) fed by the vertical stack shifted one row down. `first` makes the
    horizontal stack strictly causal (it then sees its input only left of j)."""

    def __init__(self, channels: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.vertical = nn.Conv2d(channels, 2 * channels, (2, 3))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, 2))
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        v_pre = self.vertical(F.pad(v, (1, 1, 1, 0)))  # row i sees rows i-1, i
        h_pre = self.horizontal(F.pad(h, (1, 0, 0, 0)))  # column j sees columns j-1, j
        if self.first:
            h_pre = _shift_right(h_pre)  # the input at (i, j) itself must stay unseen
        h_pre = h_pre + self.link(_shift_down(v_pre))  # only rows strictly above reach the horizontal stack
        h_new = self.out(_gate(h_pre))
        return _gate(v_pre), h_new if self.first else h + h_new


class PixelCNNCodePrior(nn.Module):
    """A tiny autoregressive prior over a `grid` of code indices: logits `(B, K, H, W)` at each
    position depend only on the codes before it in raster order."""

    def __init__(self, *, codes: int, grid: tuple[int, int], channels: int = 64, layers: int = 5) -> None:
        super().__init__()
        if not (isinstance(layers, int) and 1 <= layers <= 64):
            raise ValueError(f"the pixelcnn code prior needs layers from 1 to 64, got {layers}")
        self.codes, self.grid = codes, grid
        self.embed = nn.Embedding(codes, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, first=i == 0) for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, codes, 1))

    def forward(self, codes: Tensor) -> Tensor:
        """Logits of each position's code, `(B, K, H, W)`, for `(B, H, W)` code indices."""
        v = h = self.embed(codes).permute(0, 3, 1, 2)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p of `(B, H, W)` code indices, per image (nats)."""
        return -F.cross_entropy(self(codes).float(), codes, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, device: torch.device, temperature: float = 1.0) -> Tensor:
        """`n` code grids drawn position by position (logits divided by `temperature`)."""
        codes = torch.zeros(n, *self.grid, dtype=torch.long, device=device)
        for i in range(self.grid[0]):
            for j in range(self.grid[1]):
                logits = self(codes)[:, :, i, j].float() / max(temperature, 1e-6)
                codes[:, i, j] = torch.multinomial(F.softmax(logits, dim=1), 1).squeeze(1)
        return codes
