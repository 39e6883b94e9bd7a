"""Image grids written as PNG files (atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor

from vaezoo.files.atomic import write_bytes_atomic


def grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """`(N, C, H, W)` images in [0, 1] tiled into one uint8 `(H', W', 3)` picture, `nrow` images per
    row, on white. (Not torchvision's make_grid: importing torchvision costs seconds per command.)"""
    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, h, w = images.shape
    columns = min(nrow or max(1, math.ceil(math.sqrt(n))), max(n, 1))
    rows = math.ceil(n / columns)
    tiled = torch.ones(3, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
        tiled[:, top : top + h, left : left + w] = image
    return tiled.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def save_png(picture: Tensor, path: str | Path) -> None:
    """Write a uint8 `(H, W, 3)` picture as a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture.numpy()).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> None:
    save_png(grid(images, nrow), path)
