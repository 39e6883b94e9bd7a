"""Any folder of images (searched recursively), resized and centre-cropped to `size` x `size`.

The folder is `path` if given, else the data root. If it has `train/` and `test/` subfolders those are
the splits; otherwise a fixed fraction (`test_fraction`) of the images, drawn with a fixed seed, is the
test split. Labels are the index of each image's top-level subfolder (sorted names; images directly in
the folder come first, and all get 0 when there are no subfolders)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vaezoo import Dataset
from vaezoo.data import contents_key
from vaezoo.errors import DataError
from vaezoo.files.image_folders import IMAGE_SUFFIXES, read_images
from vaezoo_defaults.common import check_int

SPLIT_SEED = 0
MAX_SIZE = 1024  # pixels of a side, as vaezoo.files.model_header.MAX_SIDE


def _scan(folder: Path) -> tuple[list[Path], list[int]]:
    """Every image under `folder` (sorted), labelled by its top-level subfolder."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    groups = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "" for p in paths]
    index = {name: i for i, name in enumerate(sorted(set(groups)))}
    return paths, [index[g] for g in groups]


class ImageFolder(Dataset):
    """Any folder of images, resized and centre-cropped to size x size."""

    path_keys = ("path",)  # a model file's recipe never points vaezoo at a folder: --data-dir does

    def __init__(
        self, *, root: Path, path: str = "", size: int = 32, grayscale: bool = False, test_fraction: float = 0.1
    ) -> None:
        super().__init__(root=root)
        check_int("image-folder", "size", size, 1, MAX_SIZE)
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"image-folder needs 0 <= test_fraction < 1, got {test_fraction}")
        self.folder = self.root / Path(path).expanduser() if path else self.root  # relative: to the data root
        self.size = int(size)
        self.grayscale = bool(grayscale)
        self.test_fraction = float(test_fraction)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1 if self.grayscale else 3, self.size, self.size)

    def _has_split_folders(self) -> bool:
        return (self.folder / "train").is_dir() and (self.folder / "test").is_dir()

    def cache_key(self, split: str | None = None) -> str:
        """Folder, options and the contents of the files `load(split)` reads (all of them for a random split)."""
        if self._has_split_folders():
            layout = "folders"
            files = [
                p for name in ([split] if split in self.splits else self.splits) for p in _scan(self.folder / name)[0]
            ]
        else:
            layout = f"test_fraction={self.test_fraction}"
            files = _scan(self.folder)[0] if self.folder.is_dir() else []
        return f"image-folder:{self.folder.resolve()}:{self.shape}:{layout}:{contents_key(files)}"

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self.splits:
            raise DataError(f"image-folder has no split {split!r}: use one of {', '.join(self.splits)}")
        if self._has_split_folders():
            paths, labels = _scan(self.folder / split)
        else:
            paths, labels = self._random_split(split)
        if not paths:
            raise DataError(
                f"no {split} images found under {self.folder}: put image files there (or train/ and test/ "
                f"subfolders), or set the dataset's path key or --data-dir"
            )
        images = read_images(paths, (self.size, self.size), "L" if self.grayscale else "RGB")
        return images, torch.tensor(labels, dtype=torch.int64)

    def _random_split(self, split: str) -> tuple[list[Path], list[int]]:
        if not self.folder.is_dir():
            return [], []
        paths, labels = _scan(self.folder)
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        n_test = round(len(paths) * self.test_fraction)
        chosen = sorted(order[:n_test] if split == "test" else order[n_test:])
        return [paths[i] for i in chosen], [labels[i] for i in chosen]
