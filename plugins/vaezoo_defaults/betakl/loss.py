"""BCE likelihood (from logits, like `bce-kl`) with the KL weighted by `beta`, ramped up linearly from
0 over the first `warmup_steps` training steps. Evaluation (step None) reports the true ELBO (weight 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vaezoo import Loss


class BetaKL(Loss):
    """BCE summed over pixels + beta * KL, with optional linear KL warm-up."""

    params_per_channel = 1
    discrete = False

    def __init__(self, *, beta: float = 1.0, warmup_steps: int = 0) -> None:
        super().__init__()
        if beta < 0 or warmup_steps < 0:
            raise ValueError(
                f"beta-kl needs beta >= 0 and warmup_steps >= 0, got beta={beta}, warmup_steps={warmup_steps}"
            )
        self.beta = float(beta)
        self.warmup_steps = int(warmup_steps)

    def kl_weight(self, step: int | None) -> float:
        if step is None:
            return 1.0
        if self.warmup_steps and step < self.warmup_steps:
            return self.beta * step / self.warmup_steps
        return self.beta

    def nll(self, x: Tensor, out: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out.float(), x.float(), reduction="none").flatten(1).sum(1)

    def mean_image(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out.float())
