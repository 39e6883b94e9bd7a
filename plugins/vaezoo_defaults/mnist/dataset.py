"""MNIST-style datasets read from the official IDX files (`train-images-idx3-ubyte[.gz]` and friends),
parsed here with numpy (nothing is unpickled). Looked for in torchvision's layout `<root>/<Name>/raw/`,
in `<root>` itself, and in system folders (Debian's /usr/share/datasets/...); downloaded through
torchvision when absent."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaezoo import Dataset
from vaezoo.data import contents_key
from vaezoo.errors import DataError
from vaezoo_defaults.common import download

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a numpy array of its dimensions."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read {path}: {error}; delete it and put a fresh copy there") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; delete it and put a fresh copy there")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{path} holds {len(data)} bytes, expected {expected} for shape {dims}: truncated? put a fresh copy there"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class MNIST(Dataset):
    """MNIST handwritten digits, 28x28 grayscale, 60,000 train / 10,000 test images."""

    shape = (1, 28, 28)
    classes = tuple(str(digit) for digit in range(10))
    folder = "MNIST"  # torchvision's folder name under root
    system_dirs: tuple[str, ...] = ()

    def __init__(self, *, root: Path, download: bool = True) -> None:
        super().__init__(root=root)
        self.download = download

    def _candidates(self) -> list[Path]:
        return [self.root / self.folder / "raw", self.root, *(Path(d) for d in self.system_dirs)]

    def _find(self) -> Path | None:
        for folder in self._candidates():
            if all(_idx_file(folder, stem) for stems in FILES.values() for stem in stems):
                return folder
        return None

    def cache_key(self, split: str | None = None) -> str:
        """Folder and the contents of the IDX files `load(split)` reads (every split's if None)."""
        found = self._find()
        if found is None:
            return super().cache_key()
        stems = [stem for name in ([split] if split in FILES else FILES) for stem in FILES[name]]
        return (
            f"{self.folder}:{found.resolve()}:{contents_key(_idx_file(found, stem) or found / stem for stem in stems)}"
        )

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in FILES:
            raise DataError(f"{self.folder} has no split {split!r}: use one of {', '.join(FILES)}")
        folder = self._find() or self._download()
        images_path, labels_path = (_idx_file(folder, stem) for stem in FILES[split])
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != self.shape[1:] or labels.shape != images.shape[:1]:
            raise DataError(f"{images_path} and {labels_path} do not hold matching 28x28 images and labels")
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    def _download(self) -> Path:
        names = ", ".join(f"{stem}.gz" for stems in FILES.values() for stem in stems)
        hint = (
            f"{self.folder} not found: put {names} in {self.root / self.folder / 'raw'}, or point --data-dir / "
            "VAEZOO_DATA_DIR at them"
        )
        if not self.download:
            raise DataError(hint)
        import torchvision.datasets

        download(
            lambda: getattr(torchvision.datasets, self.folder)(str(self.root), train=True, download=True),
            self.root,
            hint,
        )
        found = self._find()
        if found is None:
            raise DataError(hint)
        return found


class FashionMNIST(MNIST):
    """Fashion-MNIST clothing, 28x28 grayscale, 60,000 train / 10,000 test images."""

    folder = "FashionMNIST"
    classes = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
    system_dirs = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist package
