"""Gaussian likelihood N(x; mean, sigma^2) on pixel values in [0, 1] (a density: continuous, so not
comparable in bits per dimension). With `learn_variance` the decoder gives two parameters per channel:
`out` splits as (B, 2, C, H, W) into the means and log-sigmas; otherwise `out` is the mean and `sigma`
is fixed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaezoo import Loss

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
MIN_LOG_SIGMA = -7.0  # sigma >= exp(-7), about 1e-3: keeps the density bounded


class GaussianKL(Loss):
    """Gaussian likelihood (fixed sigma or learned per-pixel variance) + KL."""

    discrete = False

    def __init__(self, *, sigma: float = 0.1, learn_variance: bool = False) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"gaussian-kl needs sigma > 0, got {sigma}")
        self.sigma = float(sigma)
        self.learn_variance = bool(learn_variance)
        self.params_per_channel = 2 if learn_variance else 1

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        out = out.float()
        if not self.learn_variance:
            return out, out.new_full((), math.log(self.sigma))  # a fill on the device, no copy from the host
        mean, log_sigma = out.unflatten(1, (2, -1)).unbind(1)
        return mean, log_sigma.clamp(min=MIN_LOG_SIGMA)

    def nll(self, x: Tensor, out: Tensor) -> Tensor:
        mean, log_sigma = self._split(out)
        per_pixel = 0.5 * ((x.float() - mean) * torch.exp(-log_sigma)).pow(2) + log_sigma + HALF_LOG_2PI
        return per_pixel.flatten(1).sum(1)

    def mean_image(self, out: Tensor) -> Tensor:
        return self._split(out)[0].clamp(0.0, 1.0)
