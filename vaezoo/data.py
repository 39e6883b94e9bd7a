"""Data: where it lives, the uint8 cache, and shuffled float batches from one tensor on the device.

A dataset is decoded once into a uint8 `(N, C, H, W)` tensor (and int64 labels) and cached
(safetensors) in a per-user folder keyed by the data path; training keeps those tensors on the device
and converts one batch at a time to float in [0, 1], so there is no per-image Python work in the loop."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from vaezoo.components import Dataset
from vaezoo.errors import DataError
from vaezoo.files import write_bytes_atomic

LIMIT_SEED = 1234  # --limit subsets do not depend on --seed


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaezoo"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else VAEZOO_DATA_DIR, else a per-user folder."""
    chosen = data_dir or os.environ.get("VAEZOO_DATA_DIR")
    return Path(chosen).expanduser() if chosen else _user_cache() / "data"


def cache_dir() -> Path:
    """VAEZOO_CACHE_DIR, else a per-user folder."""
    chosen = os.environ.get("VAEZOO_CACHE_DIR")
    return Path(chosen).expanduser() if chosen else _user_cache() / "cache"


def load_split(dataset: Dataset, split: str) -> tuple[Tensor, Tensor]:
    """The split as (uint8 images, int64 labels), decoded once and then read from the cache."""
    key = hashlib.sha256(f"{dataset.cache_key()}|{split}".encode()).hexdigest()[:24]
    path = cache_dir() / f"{type(dataset).__name__.lower()}-{split}-{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_safetensors(path.read_bytes())
            return tensors["images"], tensors["labels"]
        except Exception:
            pass  # a damaged cache file is rebuilt below
    images, labels = dataset.load(split)
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != tuple(dataset.shape):
        raise DataError(f"dataset {type(dataset).__name__} returned {tuple(images.shape)} {images.dtype}, expected uint8 (N, {', '.join(map(str, dataset.shape))})")
    try:
        write_bytes_atomic(path, save_safetensors({"images": images.contiguous(), "labels": labels.contiguous()}))
    except OSError as error:
        print(f"vaezoo: warning: cannot write the data cache {path}: {error}", file=sys.stderr)
    return images, labels


def limit_subset(images: Tensor, labels: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """`limit` images drawn at random with a fixed seed (0 or more than N: all of them)."""
    if not limit or limit >= len(images):
        return images, labels
    generator = torch.Generator().manual_seed(LIMIT_SEED)
    index = torch.randperm(len(images), generator=generator)[:limit].sort().values
    return images[index], labels[index]


def to_float(batch: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """uint8 images -> float32 in [0, 1] (in one copy, laid out in `memory_format`)."""
    return batch.to(dtype=torch.float32, memory_format=memory_format).div_(255)


def shuffled_batches(
    images: Tensor, labels: Tensor | None, order: Tensor, batch_size: int, start: int = 0, memory_format: torch.memory_format = torch.contiguous_format
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(float images, labels or None) batches of `images` (on its device) in the order `order`, from
    batch `start` on. Pass `labels=None` when the model does not use them (no gather)."""
    order = order.to(images.device)
    for first in range(start * batch_size, len(order), batch_size):
        index = order[first : first + batch_size]
        yield to_float(images.index_select(0, index), memory_format), None if labels is None else labels.index_select(0, index)


def batches(images: Tensor, batch_size: int, labels: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(float images, labels or None) batches in order (evaluation); `images` may live on the host."""
    for first in range(0, len(images), batch_size):
        yield to_float(images[first : first + batch_size]), None if labels is None else labels[first : first + batch_size]
