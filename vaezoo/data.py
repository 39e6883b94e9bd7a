"""Data: where it lives, the uint8 cache, and shuffled float batches from one tensor on the device.

A dataset is decoded once into a uint8 `(N, C, H, W)` tensor (and int64 labels) and cached
(safetensors) in a per-user folder. The cache file is named by the dataset's identity (path and
options) and records the full `cache_key`, which covers the files' contents (`contents_key`: names,
sizes, times); a file whose key, dtype, rank or shape does not match is rebuilt, never used. Training
keeps those tensors on the device and converts one batch at a time to float in [0, 1], so there is no
per-image Python work in the loop.

A cache file is written through a temporary file named with the writer's pid; each write first removes
the temporary files of writers that are gone (killed mid-write), never those of live runs sharing the
cache. A data folder that exists but is not a folder (a file, a FIFO, a symbolic link loop) is one line."""

from __future__ import annotations

import errno
import hashlib
import inspect
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from vaezoo.components import Dataset
from vaezoo.errors import DataError, VaezooError, checked_path
from vaezoo.files.atomic import check_writable_target, write_bytes_atomic
from vaezoo.files.run_folder import pid_alive, remove_files

LIMIT_SEED = 1234  # --limit subsets do not depend on --seed
# A cache file's temporary file, `.NAME.PID.XXXXXXXX.tmp` (`.NAME.XXXXXXXX.tmp` before vaezoo 0.3).
CACHE_TEMP = re.compile(r"^\..+\.safetensors\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp$")
OLD_TEMP_AGE = 3600  # seconds after which a temporary file without a pid counts as abandoned
_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaezoo"


def _env_path(name: str) -> str | None:
    """The path in environment variable `name`, None where it is not set; an empty or whitespace-only
    value is an error (it would name the current folder)."""
    value = os.environ.get(name)
    return None if value is None else checked_path(value, name)


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """--data-dir, else VAEZOO_DATA_DIR, else a per-user folder."""
    chosen = checked_path(data_dir, "--data-dir") if data_dir is not None else _env_path("VAEZOO_DATA_DIR")
    return Path(chosen).expanduser() if chosen else _user_cache() / "data"


def check_data_folder(path: Path, what: str, *, files: bool = False) -> None:
    """A DataError naming `what` if `path` exists but is not a folder (`files`: a folder or a regular
    file) or cannot be looked up (a symbolic link loop). A missing path passes: a dataset may download
    into it, or say where to put its files."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        reason = "is a symbolic link loop" if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})"
        raise DataError(f"{what} {path} {reason}: point it at a {'file or ' if files else ''}folder of data") from error
    if not (stat.S_ISDIR(mode) or (files and stat.S_ISREG(mode))):
        kind = next((name for test, name in _KINDS if test(mode)), "not a folder")
        wanted = "file or folder" if files else "folder"
        raise DataError(f"{what} {path} is {kind}, not a {wanted}: point it at a {wanted} of data")


def path_key_value(root: Path, value: str, what: str) -> Path:
    """A dataset's path key (`Dataset.path_keys`) as the path it names: `~` expanded, and a relative path
    taken relative to the data root `root` (never the current folder); a FIFO, socket, device or symbolic
    link loop there is a DataError naming `what`."""
    path = root / Path(value).expanduser()
    check_data_folder(path, what, files=True)
    return path


def checked_data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """`data_root(data_dir)`, refused in one line (naming where it came from) if it exists and is not a
    folder, or if it was given (--data-dir, VAEZOO_DATA_DIR) and does not exist: vaezoo only reads a
    folder it is pointed at, and never creates one there (only the per-user folder receives downloads)."""
    root = data_root(data_dir)
    what = "--data-dir" if data_dir else "VAEZOO_DATA_DIR" if os.environ.get("VAEZOO_DATA_DIR") else "the data folder"
    check_data_folder(root, what)
    if what != "the data folder" and not os.path.lexists(root):
        raise DataError(
            f"{what} {root} does not exist: point it at the data folder (vaezoo only reads it; without "
            "--data-dir and VAEZOO_DATA_DIR a dataset downloads into the user folder)"
        )
    return root


def cache_dir() -> Path:
    """VAEZOO_CACHE_DIR, else a per-user folder."""
    chosen = _env_path("VAEZOO_CACHE_DIR")
    return Path(chosen).expanduser() if chosen else _user_cache() / "cache"


_CONTENTS = re.compile(r"contents=[0-9a-f]{64}")


def _stat_rows(paths: list[str]) -> str:
    rows = []
    for path in paths:
        try:
            st = os.stat(path)
            rows.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n")
        except OSError as error:
            rows.append(f"{path}\0error {error.errno}\n")
    return "".join(rows)


def contents_key(paths: Iterable[str | os.PathLike[str]]) -> str:
    """`contents=<sha256>` of the files' paths, sizes, modification and change times, in order; from
    os.stat alone (nothing is read). A dataset's `cache_key` adds it for the files it reads, so that an
    added, removed, replaced or damaged file means a new decode."""
    return "contents=" + hashlib.sha256(_stat_rows([os.fspath(p) for p in paths]).encode()).hexdigest()


def _dataset_key(dataset: Dataset, split: str) -> str:
    """`dataset.cache_key(split=split)` where the method takes a split (only that split's files are
    stat'ed), else `dataset.cache_key()`."""
    cache_key: Callable[..., str] = dataset.cache_key  # Dataset's own takes no split; a subclass's may
    try:
        takes_split = "split" in inspect.signature(cache_key).parameters
    except (TypeError, ValueError):
        takes_split = False
    return f"{cache_key(split=split) if takes_split else cache_key()}|{split}"


def _read_cache(path: Path, digest: str, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
    """The cached split if `path` holds one for exactly this key and `dataset.shape`, else None."""
    try:
        with safe_open(path, framework="pt") as file:
            if (file.metadata() or {}).get("vaezoo.cache_key") != digest or set(file.keys()) != {"images", "labels"}:
                return None
            shape, labels_shape = file.get_slice("images").get_shape(), file.get_slice("labels").get_shape()
            dtypes = (file.get_slice("images").get_dtype(), file.get_slice("labels").get_dtype())
            if (
                dtypes != ("U8", "I64")
                or len(shape) != 4
                or tuple(shape[1:]) != tuple(dataset.shape)
                or labels_shape != shape[:1]
                or not shape[0]
            ):
                return None
            images, labels = file.get_tensor("images").clone(), file.get_tensor("labels").clone()
    except Exception:  # missing, unreadable or damaged: rebuilt by the caller
        return None
    return (images, labels) if _labels_fit(dataset, labels) else None


def _labels_fit(dataset: Dataset, labels: Tensor) -> bool:
    """Whether every label names one of the dataset's classes (any label fits a dataset without classes)."""
    return not (dataset.classes and len(labels) and (labels.min() < 0 or labels.max() >= len(dataset.classes)))


def _checked(dataset: Dataset, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """What `dataset.load` returned, as uint8 (N, C, H, W) images and int64 (N,) labels; a DataError otherwise."""
    name = type(dataset).__name__
    if (
        not isinstance(images, Tensor)
        or images.dtype != torch.uint8
        or images.dim() != 4
        or tuple(images.shape[1:]) != tuple(dataset.shape)
    ):
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise DataError(
            f"dataset {name} returned images {got}, expected uint8 (N, {', '.join(map(str, dataset.shape))})"
        )
    if (
        not isinstance(labels, Tensor)
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
        or labels.shape != images.shape[:1]
    ):
        got = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(f"dataset {name} returned labels {got}, expected {len(images)} integer labels")
    labels = labels.to(torch.int64)
    if not _labels_fit(dataset, labels):
        raise DataError(
            f"dataset {name} returned labels outside 0..{len(dataset.classes) - 1} (its {len(dataset.classes)} classes)"
        )
    return images, labels


def load_split(dataset: Dataset, split: str) -> tuple[Tensor, Tensor]:
    """The split as (uint8 images, int64 labels), decoded once and then read from the cache while the
    dataset's `cache_key` (its files' contents included) stays the same."""
    key = _dataset_key(dataset, split)  # before decoding: a file changed meanwhile means a new key next time
    identity = hashlib.sha256(_CONTENTS.sub("contents", key).encode()).hexdigest()[:24]
    digest = hashlib.sha256(key.encode()).hexdigest()
    path = cache_dir() / f"{type(dataset).__name__.lower()}-{split}-{identity}.safetensors"
    cached = _read_cache(path, digest, dataset)
    if cached is not None:
        return cached
    images, labels = _checked(dataset, *dataset.load(split))
    tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
    try:
        _write_cache(path, save_safetensors(tensors, metadata={"vaezoo.cache_key": digest}))
    except (OSError, VaezooError) as error:  # the cache only saves time: the run goes on without it
        print(f"vaezoo: warning: cannot write the data cache {path}: {error}", file=sys.stderr)
    return images, labels


def _write_cache(path: Path, data: bytes) -> None:
    """Replace the cache file `path` in one step (vaezoo.files.atomic.write_bytes_atomic, whose temporary
    file carries this process's pid), after removing the temporary files that dead writers left in the
    cache folder, for any cache file."""
    check_writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(path.parent)
    write_bytes_atomic(path, data)


def remove_dead_temp_files(folder: Path) -> list[str]:
    """Remove the cache's temporary files whose writer is gone: those named with a pid that no process
    has, and those without one (older vaezoo) untouched for OLD_TEMP_AGE seconds. Runs sharing the
    cache never lose a file they are writing. Returns the names removed."""

    def dead(entry: os.DirEntry[str]) -> bool:
        match = CACHE_TEMP.match(entry.name)
        if not match:
            return False
        if match[1]:
            return not pid_alive(int(match[1]))
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > OLD_TEMP_AGE

    return remove_files(folder, dead)


def limit_subset(images: Tensor, labels: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """`limit` images drawn at random with a fixed seed (0 or more than N: all of them)."""
    if not limit or limit >= len(images):
        return images, labels
    generator = torch.Generator().manual_seed(LIMIT_SEED)
    index = torch.randperm(len(images), generator=generator)[:limit].sort().values
    return images[index], labels[index]


def hold_out(
    images: Tensor, labels: Tensor, fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, validation): `fraction` of the images (at least one) drawn at random by `seed` as a
    validation split, the rest for training, each in its original order."""
    from vaezoo.errors import DataError

    count = max(1, round(len(images) * fraction))
    if count >= len(images):
        raise DataError(
            f"train.val_fraction {fraction} of {len(images)} training images leaves none to train on: hold out less"
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:count].sort().values, order[count:].sort().values
    return (images[kept], labels[kept]), (images[held], labels[held])


def to_float(batch: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """uint8 images -> float32 in [0, 1] (in one copy, laid out in `memory_format`)."""
    return batch.to(dtype=torch.float32, memory_format=memory_format).div_(255)


def batches(images: Tensor, batch_size: int, labels: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(float images, labels or None) batches in order (evaluation); `images` may live on the host."""
    for first in range(0, len(images), batch_size):
        yield (
            to_float(images[first : first + batch_size]),
            None if labels is None else labels[first : first + batch_size],
        )
