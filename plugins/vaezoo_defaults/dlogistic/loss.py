"""Discretized mixture of logistics over the 256 pixel values, as in PixelCNN++ (Salimans et al., 2017).

Each image channel has its own mixture of `n_mix` logistics (no coupling between the RGB channels), so
the decoder gives `3 * n_mix` parameters per channel: `out` (B, C * 3 * n_mix, H, W) splits as
(B, 3, n_mix, C, H, W) into mixture logits, means and log-scales. Pixel values are mapped to [-1, 1];
the bins at 0 and 255 extend to -inf and +inf, so the 256 probabilities of a pixel sum to 1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vaezoo import Loss
from vaezoo_defaults.common import check_int

MIN_LOG_SCALE = -7.0
HALF_BIN = 1.0 / 255.0  # half the width of one of the 256 bins on [-1, 1]
MAX_MIX = 256  # logistics per channel (PixelCNN++ uses 10)


class DiscretizedLogisticKL(Loss):
    """Discretized logistic mixture over the 256 pixel values (PixelCNN++) + KL."""

    discrete = True

    def __init__(self, *, n_mix: int = 5) -> None:
        super().__init__()
        check_int("dlogistic-kl", "n_mix", n_mix, 1, MAX_MIX)
        self.n_mix = int(n_mix)
        self.params_per_channel = 3 * self.n_mix

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log mixture weights, means and log-scales, each (B, n_mix, C, H, W)."""
        logits, means, log_scales = out.float().unflatten(1, (3, self.n_mix, -1)).unbind(1)
        return F.log_softmax(logits, dim=1), means, log_scales.clamp(min=MIN_LOG_SCALE)

    def nll(self, x: Tensor, out: Tensor) -> Tensor:
        log_weights, means, log_scales = self._split(out)
        x = (2.0 * x.float() - 1.0).unsqueeze(1)  # (B, 1, C, H, W) on [-1, 1]
        centered = x - means
        inv_scale = torch.exp(-log_scales)
        plus = inv_scale * (centered + HALF_BIN)
        minus = inv_scale * (centered - HALF_BIN)
        log_cdf_plus = F.logsigmoid(plus)  # bin of value 0: (-inf, -1 + half bin]
        log_one_minus_cdf_minus = F.logsigmoid(-minus)  # bin of value 255: [1 - half bin, inf)
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        # Where the bin mass underflows, use the density at the bin centre times the bin width.
        mid = inv_scale * centered
        log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid) + math.log(2 * HALF_BIN)
        log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))
        return -torch.logsumexp(log_probs + log_weights, dim=1).flatten(1).sum(1)

    def mean_image(self, out: Tensor) -> Tensor:
        log_weights, means, _ = self._split(out)
        mean = (log_weights.exp() * means).sum(1)
        return ((mean + 1.0) / 2.0).clamp(0.0, 1.0)
