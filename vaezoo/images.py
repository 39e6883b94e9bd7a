"""Image grids written as PNG files (atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor

from vaezoo.files import write_bytes_atomic


def grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """`(N, C, H, W)` images in [0, 1] tiled into one uint8 `(H', W', 3)` picture."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    tiled = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    return tiled.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def save_png(picture: Tensor, path: str | Path) -> None:
    """Write a uint8 `(H, W, 3)` picture as a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture.numpy()).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> None:
    save_png(grid(images, nrow), path)
