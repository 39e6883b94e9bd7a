"""Image grids written as PNG files (atomically).

How a tile shows an image of any shape `(C, H, W)`: 1 channel is gray, 3 channels are RGB, and any other
count (2, 4, ...) is shown channel by channel, each channel a gray picture, side by side from channel 0
on the left with a 1-pixel white gap (4 channels are not taken for RGBA: a fourth channel may be
anything). A tile less than MIN_TILE_HEIGHT pixels high (a 1-D signal declared as `(C, 1, L)`) is
stretched to that height, each row repeated, so that a signal shows as a strip."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor

from vaezoo.files.atomic import write_bytes_atomic

MIN_TILE_HEIGHT = 8  # pixels: shorter tiles (1-D signals) are stretched to this height


def tiles(images: Tensor) -> Tensor:
    """`(N, C, H, W)` images in [0, 1] as `(N, 3, H', W')` RGB tiles, shown as the module docstring says."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, channels, h, w = images.shape
    if channels not in (1, 3):  # each channel a gray picture, side by side, a white column between two
        padded = torch.nn.functional.pad(images, (0, 1), value=1.0)
        images = padded.permute(0, 2, 1, 3).reshape(n, 1, h, channels * (w + 1))[..., :-1]
    if 0 < h < MIN_TILE_HEIGHT:
        images = images.repeat_interleave(math.ceil(MIN_TILE_HEIGHT / h), dim=2)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """`(N, C, H, W)` images in [0, 1] tiled into one uint8 `(H', W', 3)` picture, `nrow` images per
    row, on white; any C and any size (see the module docstring). (Not torchvision's make_grid:
    importing torchvision costs seconds per command.)"""
    images = tiles(images)
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
