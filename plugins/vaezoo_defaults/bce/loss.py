"""BCE + KL computed from logits: equal to the notebook's `BCE(sigmoid(out), x, sum) + KL`, but stable
for large logits and safe under autocast (computed in float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vaezoo import Loss


class BCEKL(Loss):
    """Binary cross-entropy summed over pixels + KL (the notebook loss)."""

    params_per_channel = 1
    discrete = False  # BCE on pixel values in [0, 1] is not a likelihood over the 256 levels

    def nll(self, x: Tensor, out: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)

    def mean_image(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out.float())
