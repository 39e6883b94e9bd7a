"""Drawing images from a model's prior, repeatable by seed."""

from __future__ import annotations

import torch
from torch import Tensor

from vaezoo.model import VAE


def sample_images(model: VAE, n: int, *, seed: int = 0, temperature: float = 1.0) -> Tensor:
    """`n` images in [0, 1] on the CPU; the same seed gives the same images on the same machine."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.sample(n, temperature).cpu()
