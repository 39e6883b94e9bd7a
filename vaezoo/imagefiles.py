"""Decoding folders of image files into one uint8 tensor, in parallel threads (PIL releases the GIL)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from vaezoo.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


def _decode(path: Path, size: Sequence[int], mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert(mode)
        if image.size != (size[1], size[0]):
            image = _resize_center_crop(image, size)
        array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _resize_center_crop(image, size: Sequence[int]):
    """Resize the short side to fit, then crop the centre to `size` (H, W)."""
    from PIL import Image

    height, width = size
    scale = max(height / image.height, width / image.width)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def read_images(paths: Sequence[Path], size: Sequence[int], mode: str = "RGB") -> Tensor:
    """Decode `paths` into a uint8 `(N, C, H, W)` tensor, resizing and centre-cropping to `size`."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(lambda p: _decode(p, size, mode), paths, chunksize=256))
    if not arrays:
        return torch.empty(0, 1 if mode == "L" else 3, *size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_class_folders(folder: Path, *, classes: Sequence[str] | None = None, size: Sequence[int], mode: str = "RGB") -> tuple[Tensor, Tensor]:
    """Images under `folder/<class>/*`, labelled by the class's index (sorted names if not given)."""
    if not folder.is_dir():
        raise DataError(f"missing image folder {folder}: expected {folder}/<class>/<image files>")
    names = list(classes) if classes is not None else sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DataError(f"missing class folder {class_dir}")
        found = list_images(class_dir)
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise DataError(f"no images found under {folder}")
    return read_images(paths, size, mode), torch.tensor(labels, dtype=torch.int64)
