"""Test-split metrics: the negative ELBO per image (nats) and its parts."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vaezoo.data import batches
from vaezoo.devices import Precision
from vaezoo.model import VAE


@torch.no_grad()
def evaluate(model: VAE, images: Tensor, *, batch_size: int = 500, precision: Precision | None = None, seed: int = 0) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL per image over uint8 `images` (one posterior
    sample each, drawn from a generator seeded with `seed` so that results repeat)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for x in batches(images, batch_size):
            x = x.to(device, non_blocking=True)
            with precision.autocast(device) if precision else torch.autocast(device.type, enabled=False):
                parts = model(x)
            totals += torch.stack([parts.loss.sum(), parts.recon.sum(), parts.kl.sum()]).double()
    model.train(was_training)
    loss, recon, kl = (totals / max(1, len(images))).tolist()
    metrics: dict[str, Any] = {"loss": loss, "recon": recon, "kl": kl}
    if getattr(model.loss, "discrete", False):
        metrics["bits_per_dim"] = loss / (math.prod(model.in_shape) * math.log(2))
    return metrics
