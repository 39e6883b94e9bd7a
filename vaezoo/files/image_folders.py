"""Decoding folders of image files into one uint8 tensor, in parallel threads (PIL releases the GIL).

A file that cannot be decoded (empty, corrupt, truncated, unreadable, or larger than
`MAX_IMAGE_PIXELS`) fails the whole read with one `DataError` that names it and counts the others:
vaezoo never trains on a silently different set of images."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaezoo.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}

# The largest image (width x height) vaezoo decodes: 64 Mi pixels, about 200 MB as RGB, above any
# camera's photo. A file whose header claims more (a "decompression bomb": a few bytes that would
# decode to gigabytes) is refused before its pixels are decoded. Below PIL's own warning limit.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def _reason(path: str | os.PathLike[str], error: BaseException) -> str:
    """Why `path` could not be decoded, in a few words (one line)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, FileNotFoundError):
        return "it disappeared while reading"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"a decompression bomb? {str(error).rstrip('.')}; vaezoo decodes at most {MAX_IMAGE_PIXELS} pixels"
    if isinstance(error, UnidentifiedImageError):
        try:
            empty = os.stat(path).st_size == 0
        except OSError:
            empty = False
        return "empty file" if empty else "not an image file PIL can read"
    text = str(error) if type(error) is OSError and str(error) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())


def _decode(path: str | os.PathLike[str], size: Sequence[int], mode: str) -> np.ndarray | str:
    """The image as an (H, W, C) uint8 array, or why it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
                return (
                    f"a decompression bomb? {width}x{height} pixels; vaezoo decodes 1 to {MAX_IMAGE_PIXELS} "
                    "pixels (vaezoo.files.image_folders.MAX_IMAGE_PIXELS)"
                )
            opened.load()
            image = opened.convert(mode)
    except Exception as error:  # any failure while PIL parses this file is this file's fault
        return _reason(path, error)
    if image.size != (size[1], size[0]):
        image = _resize_center_crop(image, size)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _resize_center_crop(image, size: Sequence[int]):
    """The centre of `image` with the aspect ratio of `size` (H, W), resized to `size` in one step:
    only the output is allocated, so an image of 1 x 4,000,000 pixels costs no more than a square one."""
    from PIL import Image

    height, width = size
    scale = max(height / image.height, width / image.width)
    crop_width, crop_height = min(image.width, width / scale), min(image.height, height / scale)
    left, top = (image.width - crop_width) / 2, (image.height - crop_height) / 2
    box = (left, top, left + crop_width, top + crop_height)
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box)


def _bad_images_error(failures: list[tuple[Path, str]], total: int) -> DataError:
    shown = ", ".join(f"{path} ({reason})" for path, reason in failures[:3])
    more = f" and {len(failures) - 3} more" if len(failures) > 3 else ""
    them = "it" if len(failures) == 1 else "them"
    return DataError(f"cannot decode {len(failures)} of {total} images: {shown}{more}; delete or replace {them}")


def read_images(paths: Sequence[str | os.PathLike[str]], size: Sequence[int], mode: str = "RGB") -> Tensor:
    """Decode `paths` into a uint8 `(N, C, H, W)` tensor, resizing and centre-cropping to `size`;
    a DataError naming the files that cannot be decoded, if any."""
    from PIL import Image

    with warnings.catch_warnings():  # PIL's bomb warning becomes an error of that file (filters are process-wide)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            results = list(pool.map(lambda p: _decode(p, size, mode), paths, chunksize=256))
    failures = [(Path(path), result) for path, result in zip(paths, results) if isinstance(result, str)]
    if failures:
        raise _bad_images_error(failures, len(paths))
    if not results:
        return torch.empty(0, 1 if mode == "L" else 3, *size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(results)).permute(0, 3, 1, 2).contiguous()


def image_files(folder: str | os.PathLike[str]) -> list[str]:
    """Paths (as strings) of the image files directly in `folder`, sorted; a DataError if it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(
                e.path for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()
            )
    except OSError as error:
        raise DataError(f"cannot list the image folder {folder}: {error.strerror or error}") from error


def class_folder_files(
    folder: Path, classes: Sequence[str] | None = None, *, strict: bool = True
) -> tuple[list[str], list[int]]:
    """Image paths under `folder/<class>/` and each one's class index (sorted folder names if `classes`
    is not given). `strict=False` skips what is missing or unreadable (for cache keys) instead of raising."""
    try:
        names = list(classes) if classes is not None else sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as error:
        if strict:
            raise DataError(f"missing image folder {folder}: expected {folder}/<class>/<image files>") from error
        return [], []
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            if strict:
                raise DataError(f"missing class folder {class_dir}")
            continue
        try:
            found = image_files(class_dir)
        except DataError:
            if strict:
                raise
            continue
        paths += found
        labels += [index] * len(found)
    return paths, labels


def read_class_folders(
    folder: Path, *, classes: Sequence[str] | None = None, size: Sequence[int], mode: str = "RGB"
) -> tuple[Tensor, Tensor]:
    """Images under `folder/<class>/*`, labelled by the class's index (sorted names if not given)."""
    if not folder.is_dir():
        raise DataError(f"missing image folder {folder}: expected {folder}/<class>/<image files>")
    paths, labels = class_folder_files(folder, classes)
    if not paths:
        raise DataError(f"no images found under {folder}")
    return read_images(paths, size, mode), torch.tensor(labels, dtype=torch.int64)
