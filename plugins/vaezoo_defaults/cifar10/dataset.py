"""CIFAR-10 from the official python batches (`cifar-10-batches-py/`, read by torchvision) or from
class folders (`train/<class>/*.png|jpg`, `test/<class>/...`); downloaded through torchvision if
neither is there."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vaezoo import Dataset
from vaezoo.data import contents_key
from vaezoo.errors import DataError
from vaezoo.files.image_folders import class_folder_files, read_class_folders
from vaezoo_defaults.common import download

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CIFAR10(Dataset):
    """CIFAR-10, 32x32 RGB, 50,000 train / 10,000 test images in 10 classes."""

    shape = (3, 32, 32)
    classes = CLASSES

    def __init__(self, *, root: Path, download: bool = True) -> None:
        super().__init__(root=root)
        self.download = download

    def _find(self) -> tuple[str, Path] | None:
        for base in (self.root, self.root / "cifar10", self.root / "cifar10-images", self.root / "cifar-10"):
            if (base / "cifar-10-batches-py" / "data_batch_1").is_file():
                return "batches", base
            if (base / "train").is_dir() and (base / "test").is_dir():
                return "folders", base
        return None

    def cache_key(self, split: str | None = None) -> str:
        """Layout, folder and the contents of the files `load(split)` reads (every split's if None)."""
        found = self._find()
        if found is None:
            return super().cache_key()
        layout, base = found
        splits = [split] if split in self.splits else list(self.splits)
        if layout == "folders":
            files = [path for name in splits for path in class_folder_files(base / name, CLASSES, strict=False)[0]]
        else:
            batches = base / "cifar-10-batches-py"
            names = [
                "batches.meta",
                *([f"data_batch_{i}" for i in range(1, 6)] if "train" in splits else []),
                *(["test_batch"] if "test" in splits else []),
            ]
            files = [batches / name for name in names]
        return f"cifar10:{layout}:{base.resolve()}:{contents_key(files)}"

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        found = self._find()
        if found is None:
            found = ("batches", self._download())
        layout, base = found
        if layout == "folders":
            return read_class_folders(base / split, classes=CLASSES, size=self.shape[1:])
        return self._read_batches(base, split)

    def _read_batches(self, base: Path, split: str) -> tuple[Tensor, Tensor]:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        try:  # torchvision checks each batch file's md5 before unpickling it: only the official files are read
            data = TorchvisionCIFAR10(str(base), train=split == "train", download=False)
        except RuntimeError as error:
            raise DataError(
                f"{base / 'cifar-10-batches-py'} is incomplete or not the official CIFAR-10 release (a file "
                "is missing or its checksum differs): "
                f"replace it with the extracted cifar-10-python.tar.gz, or use class folders"
            ) from error
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(data.targets, dtype=torch.int64)

    def _download(self) -> Path:
        hint = (
            f"CIFAR-10 not found under {self.root}: put the class folders (train/<class>/*.png|jpg and "
            f"test/<class>/...) or cifar-10-batches-py/ there, or point --data-dir / VAEZOO_DATA_DIR at them"
        )
        if not self.download:
            raise DataError(hint)
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        download(lambda: TorchvisionCIFAR10(str(self.root), train=True, download=True), self.root, hint)
        return self.root
