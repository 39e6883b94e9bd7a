"""Standard normal prior with the closed-form KL of a diagonal Gaussian posterior."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaezoo import Prior


class NormalPrior(Prior):
    """Standard normal N(0, I) with closed-form KL."""

    _device_anchor: Tensor  # a buffer: where the prior's samples go

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__(latent_dim=latent_dim)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def sample(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self._device_anchor.device)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def kl(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
