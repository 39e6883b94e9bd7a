"""Data input against a hostile or unlucky user: the decoded-image cache follows the folder's contents and is
checked before use; a bad image file is one line naming it, exit 2, never an internal error."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Command, run_cli, run_cli_batch
from safetensors import safe_open
from safetensors.torch import save
from tinydata import TINY_ARGS, error_lines, write_class_folders

from vaezoo.data import contents_key, load_split
from vaezoo.errors import DataError
from vaezoo.files.image_folders import MAX_IMAGE_PIXELS, read_images
from vaezoo_defaults.cifar10.dataset import CIFAR10
from vaezoo_defaults.imagefolder.dataset import ImageFolder
from vaezoo_defaults.mnist.dataset import MNIST


class Counting:
    """Mixin: counts `load` calls (decodes) per class."""

    decodes = 0

    def load(self, split):
        type(self).decodes += 1
        return super().load(split)


class CountingCIFAR10(Counting, CIFAR10):
    pass


class CountingFolder(Counting, ImageFolder):
    pass


class CountingMNIST(Counting, MNIST):
    pass


DATASETS = {"cifar10": (CountingCIFAR10, CIFAR10), "image-folder": (CountingFolder, ImageFolder)}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(folder))
    for cls in (CountingCIFAR10, CountingFolder, CountingMNIST):
        cls.decodes = 0
    return folder


def _png(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _bump_mtime(path: Path, seconds: float = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


# -- the cache follows the folder's contents ---------------------------------------------------


def _add(root: Path) -> None:
    _png(root / "train" / "cat" / "0100.png", seed=100)


def _remove(root: Path) -> None:
    (root / "train" / "dog" / "0000.png").unlink()


def _modify(root: Path) -> None:
    path = root / "train" / "airplane" / "0000.png"
    _png(path, seed=101)
    _bump_mtime(path)


def _rename(root: Path) -> None:
    (root / "train" / "bird" / "0000.png").rename(root / "train" / "bird" / "0009.png")


def _damage(root: Path) -> None:
    path = root / "train" / "frog" / "0000.png"
    path.write_bytes(path.read_bytes()[:40])
    _bump_mtime(path)


CHANGES = {"add": _add, "remove": _remove, "modify": _modify, "rename": _rename}


@pytest.mark.parametrize("kind", sorted(DATASETS))
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_folder_is_decoded_again(tmp_path, cache, kind, change):
    root = write_class_folders(tmp_path / "data", train_per_class=2, test_per_class=1)
    counting, plain = DATASETS[kind]
    images, labels = load_split(counting(root=root), "train")
    assert load_split(counting(root=root), "train")[0].shape == images.shape and counting.decodes == 1
    CHANGES[change](root)
    fresh, fresh_labels = plain(root=root).load("train")  # what the folder holds now
    again, again_labels = load_split(counting(root=root), "train")
    assert counting.decodes == 2, f"the cache was used after a {change}"
    assert torch.equal(again, fresh) and torch.equal(again_labels, fresh_labels)
    assert again.shape != images.shape or not torch.equal(again, images) or not torch.equal(again_labels, labels)
    load_split(counting(root=root), "train")
    assert counting.decodes == 2, "the rebuilt cache file is not used"
    assert len(list(cache.glob("*-train-*.safetensors"))) == 1, "a stale cache file was left next to the new one"


def test_same_size_and_restored_mtime_is_still_noticed(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    (root / "train" / "airplane" / "0000.png").unlink()
    from PIL import Image

    path = root / "train" / "airplane" / "0000.bmp"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    first, _ = load_split(CountingCIFAR10(root=root), "train")
    before = path.stat()
    time.sleep(0.05)  # past the kernel's coarse clock tick
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    again, _ = load_split(CountingCIFAR10(root=root), "train")
    assert CountingCIFAR10.decodes == 2 and int(again[0].float().mean()) == 200 and int(first[0].float().mean()) == 0


def test_a_damaged_image_after_caching_fails_instead_of_training_on_the_old_cache(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    load_split(CountingCIFAR10(root=root), "train")
    _damage(root)
    with pytest.raises(DataError, match=str(root / "train" / "frog" / "0000.png")):
        load_split(CountingCIFAR10(root=root), "train")


def test_only_the_splits_files_are_in_its_key_and_other_splits_keep_their_cache(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    load_split(CountingCIFAR10(root=root), "test")
    load_split(CountingCIFAR10(root=root), "train")
    _add(root)  # a train image
    load_split(CountingCIFAR10(root=root), "test")
    assert CountingCIFAR10.decodes == 2, "a train image invalidated the test cache"
    load_split(CountingCIFAR10(root=root), "train")
    assert CountingCIFAR10.decodes == 3
    assert CIFAR10(root=root).cache_key() != CIFAR10(root=root).cache_key("test")  # no split: every split's files


def test_image_folder_options_are_in_the_key(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    keys = {ImageFolder(root=root, **options).cache_key("train") for options in ({}, {"size": 16}, {"grayscale": True})}
    assert len(keys) == 3
    flat = tmp_path / "flat"
    shutil.copytree(root / "train", flat)
    assert (
        ImageFolder(root=flat, test_fraction=0.1).cache_key() != ImageFolder(root=flat, test_fraction=0.2).cache_key()
    )


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _fake_mnist(raw: Path, seed: int = 0) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(6) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(3) % 10)


def test_new_mnist_idx_files_are_decoded_again(tmp_path, cache):
    raw = tmp_path / "MNIST" / "raw"
    _fake_mnist(raw, seed=0)
    first, _ = load_split(CountingMNIST(root=tmp_path, download=False), "test")
    test_key = MNIST(root=tmp_path, download=False).cache_key("test")
    _write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((6, 28, 28)))
    _bump_mtime(raw / "train-images-idx3-ubyte.gz")
    assert (
        MNIST(root=tmp_path, download=False).cache_key("test") == test_key
    )  # the train files are not the test split's
    _fake_mnist(raw, seed=1)
    for name in os.listdir(raw):
        _bump_mtime(raw / name, 20)
    again, _ = load_split(CountingMNIST(root=tmp_path, download=False), "test")
    assert CountingMNIST.decodes == 2 and not torch.equal(first, again)


def test_official_batches_key_follows_the_batch_files(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]:
        (batches / name).write_bytes(b"x" * 10)
    train, test = CIFAR10(root=tmp_path).cache_key("train"), CIFAR10(root=tmp_path).cache_key("test")
    (batches / "data_batch_3").write_bytes(b"y" * 11)
    assert CIFAR10(root=tmp_path).cache_key("train") != train and CIFAR10(root=tmp_path).cache_key("test") == test


def test_contents_key_reads_nothing_and_notes_missing_files(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"1")
    path.chmod(0)  # stat needs no read permission
    key = contents_key([path])
    assert key.startswith("contents=") and len(key) == len("contents=") + 64
    assert contents_key([path, tmp_path / "missing.png"]) != key
    assert contents_key([tmp_path / "missing.png", path]) != contents_key(
        [path, tmp_path / "missing.png"]
    )  # order is the labels' order


# -- a cache file is checked before use ---------------------------------------------------------


def _forgeries(images: torch.Tensor, labels: torch.Tensor) -> dict[str, dict[str, torch.Tensor] | bytes | None]:
    n = len(images)
    return {
        "float images": {"images": images.float(), "labels": labels},
        "int16 images": {"images": images.to(torch.int16), "labels": labels},
        "3-d images": {"images": images[:, 0], "labels": labels},
        "5-d images": {"images": images[:, None], "labels": labels},
        "16x16 images": {"images": images[:, :, :16, :16].contiguous(), "labels": labels},
        "1 channel": {"images": images[:, :1].contiguous(), "labels": labels},
        "no images": {"images": images[:0], "labels": labels[:0]},
        "short labels": {"images": images, "labels": labels[:-1]},
        "int32 labels": {"images": images, "labels": labels.to(torch.int32)},
        "float labels": {"images": images, "labels": labels.float()},
        "2-d labels": {"images": images, "labels": labels[:, None]},
        "labels out of range": {"images": images, "labels": torch.full((n,), 10**9, dtype=torch.int64)},
        "negative labels": {"images": images, "labels": torch.full((n,), -1, dtype=torch.int64)},
        "missing labels": {"images": images},
        "extra tensor": {"images": images, "labels": labels, "other": labels.clone()},
        "garbage": b"\x00garbage" * 10,
        "empty file": b"",
        "directory": None,
    }


FORGERY_NAMES = sorted(_forgeries(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)))


@pytest.mark.parametrize("forgery", FORGERY_NAMES)
def test_a_wrong_cache_file_is_rebuilt_not_used(tmp_path, cache, forgery):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    images, labels = load_split(CountingCIFAR10(root=root), "test")
    (path,) = cache.iterdir()
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()  # the right key: only the contents can tell it is wrong
    forged = _forgeries(images, labels)[forgery]
    path.unlink()
    if forged is None:
        path.mkdir()
    else:
        path.write_bytes(
            forged
            if isinstance(forged, bytes)
            else save({k: v.clone().contiguous() for k, v in forged.items()}, metadata=metadata)
        )
    again, again_labels = load_split(CountingCIFAR10(root=root), "test")
    assert CountingCIFAR10.decodes == 2, f"a cache file with {forgery} was used"
    assert torch.equal(again, images) and torch.equal(again_labels, labels) and again_labels.dtype == torch.int64
    if forged is not None:
        load_split(CountingCIFAR10(root=root), "test")
        assert CountingCIFAR10.decodes == 2, "the rebuilt cache file is not used"


def test_a_cache_file_of_another_key_is_rebuilt(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    images, labels = load_split(CountingCIFAR10(root=root), "test")
    (path,) = cache.iterdir()
    fake = torch.zeros_like(images)
    for metadata in ({}, {"vaezoo.cache_key": "0" * 64}):
        path.write_bytes(save({"images": fake, "labels": labels}, metadata=metadata or None))
        assert torch.equal(load_split(CountingCIFAR10(root=root), "test")[0], images)
    assert CountingCIFAR10.decodes == 3


def test_a_dataset_returning_wrong_labels_is_a_data_error(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)

    class Bad(CIFAR10):
        def load(self, split):
            images, labels = super().load(split)
            return images, labels[:-1]

    with pytest.raises(DataError, match="labels"):
        load_split(Bad(root=root), "test")
    assert not cache.exists() or not list(cache.iterdir())


# -- bad image files ---------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


BAD_FILES = {
    "empty.png": (lambda: b"", "empty file"),
    "random.png": (
        lambda: np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "not an image file",
    ),
    "text.jpg": (lambda: b"hello, I am not a JPEG\n", "not an image file"),
    "truncated.jpg": (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
    "headonly.jpg": (lambda: _jpeg_bytes()[:200], ""),
    "bomb.png": (lambda: png_header_only(100_000, 100_000), "decompression bomb"),
    "bad-idat.png": (lambda: png_header_only(32, 32), ""),
    "png-as.jpg": (lambda: png_header_only(1, 1)[:30], ""),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_image_is_a_one_line_data_error_naming_it(tmp_path, cache, name):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    content, reason = BAD_FILES[name]
    bad = root / "train" / "deer" / name
    bad.write_bytes(content())
    with pytest.raises(DataError) as error:
        load_split(CIFAR10(root=root), "train")
    message = str(error.value)
    assert (
        str(bad) in message and reason in message and "\n" not in message and "cannot decode 1 of 11 images" in message
    )
    assert not cache.exists() or not list(cache.iterdir()), "a failed decode left a cache file"


def test_bombs_between_vaezoos_and_pils_limits_are_refused_before_decoding(tmp_path):
    from PIL import Image

    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # above vaezoo's limit, below PIL's warning
    assert side * side <= Image.MAX_IMAGE_PIXELS
    just_over = tmp_path / "over.png"
    just_over.write_bytes(png_header_only(side, side))
    pil_warns = tmp_path / "warns.png"  # above PIL's warning, below its error: the warning is not printed
    pil_warns.write_bytes(png_header_only(int(Image.MAX_IMAGE_PIXELS**0.5) + 10, int(Image.MAX_IMAGE_PIXELS**0.5) + 10))
    wide = tmp_path / "wide.png"  # one row, a billion pixels
    wide.write_bytes(png_header_only(1_000_000_000, 1))
    import warnings

    for path in (just_over, pil_warns, wide):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(DataError, match=f"{path}.*(decompression bomb)"):
                read_images([path], (32, 32))
        assert not caught, f"a warning escaped (a second stderr line): {[str(w.message) for w in caught]}"


def test_many_bad_images_are_counted_in_one_line(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    for index in range(5):
        (root / "train" / "ship" / f"bad{index}.png").write_bytes(b"")
    with pytest.raises(DataError) as error:
        load_split(CIFAR10(root=root), "train")
    message = str(error.value)
    assert "cannot decode 5 of 15 images" in message and "and 2 more" in message and "\n" not in message
    assert str(root / "train" / "ship" / "bad0.png") in message


def test_large_real_images_below_the_limit_still_decode(tmp_path):
    from PIL import Image

    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(tmp_path / "photo.jpg")  # 12 megapixels
    images = read_images([tmp_path / "photo.jpg"], (32, 32))
    assert images.shape == (1, 3, 32, 32) and abs(int(images[0, 2].float().mean()) - 30) <= 2


def test_directories_and_dangling_links_named_like_images_are_not_images(tmp_path, cache):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    (root / "train" / "cat" / "folder.png").mkdir()
    (root / "train" / "cat" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    images, _ = load_split(CIFAR10(root=root), "train")
    assert len(images) == 10


def test_an_unreadable_class_folder_is_a_data_error(tmp_path, cache, monkeypatch):
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith(os.path.join("train", "horse")):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=f"cannot list the image folder {root / 'train' / 'horse'}: Permission denied"):
        load_split(CIFAR10(root=root), "train")


def test_an_unreadable_image_in_process(tmp_path, cache, monkeypatch):
    """Permission denied on one file, simulated (so that it holds when the tests run as root)."""
    import PIL.Image

    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    locked = root / "train" / "truck" / "0000.png"
    real_open = PIL.Image.open

    def open_(fp, *args, **kwargs):
        if os.fspath(fp) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", open_)
    with pytest.raises(DataError, match=f"{locked} \\(permission denied\\)"):
        load_split(CIFAR10(root=root), "train")


# -- through the command line, in a fresh process ----------------------------------------------


def _drop_dac() -> list[str] | None:
    """A command prefix under which root obeys file permissions (setpriv dropping the capabilities
    that bypass them), [] when not root, None when neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return None
    prefix = [
        setpriv,
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
        "--",
    ]
    probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True)
    return prefix if probe.returncode == 0 else None


CLI_CASES = [  # each kind once, both datasets (a fresh process costs seconds)
    ("empty.png", "folder-vae"),
    ("random.png", "cifar-vae"),
    ("truncated.jpg", "folder-vae"),
    ("truncated.jpg", "cifar-vae"),
    ("bomb.png", "cifar-vae"),
    ("unreadable.png", "folder-vae"),
]


def bad_image_run(folder: Path, name: str, recipe: str) -> tuple[Path, list[str], dict[str, str]]:
    """Class folders in `folder` with the bad image `name` in them, and the `vaezoo run RECIPE` arguments
    and environment that train on them: the image, the arguments and the environment."""
    root = write_class_folders(folder / "data", train_per_class=1, test_per_class=1)
    bad = root / "train" / "horse" / name
    if name == "unreadable.png":
        shutil.copy(root / "train" / "horse" / "0000.png", bad)
        bad.chmod(0)
    else:
        bad.write_bytes(BAD_FILES[name][0]())
    args = ["run", recipe, "--data-dir", str(root), "--epochs", "1", "--device", "cpu", "--out", str(folder / "run")]
    return bad, [*args, *TINY_ARGS], {"VAEZOO_CACHE_DIR": str(folder / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bad_image_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple]:
    """CLI_CASES item -> (its folder, the bad image, the run on it) or, for an unreadable image that root
    can read without setpriv, a reason to skip. The runs that need no setpriv are one fresh process."""
    root = tmp_path_factory.mktemp("bad-images")
    cases, batch = {}, []
    for index, (name, recipe) in enumerate(CLI_CASES):
        folder = root / str(index)
        bad, args, env = bad_image_run(folder, name, recipe)
        prefix: list[str] = []
        if name == "unreadable.png" and os.access(
            bad, os.R_OK
        ):  # root reads anything unless its capabilities are dropped
            prefix = _drop_dac()  # are dropped
            if prefix is None:
                cases[name, recipe] = "running as root without setpriv: chmod 000 does not stop root reading the file"
                continue
        if prefix:
            result = subprocess.run(
                [*prefix, sys.executable, "-m", "vaezoo", *args],
                capture_output=True,
                text=True,
                env={k: v for k, v in {**os.environ, **env}.items() if k != "VAEZOO_DEBUG"},
                timeout=600,
            )
            cases[name, recipe] = (folder, bad, result)
        else:
            cases[name, recipe] = (folder, bad)
            batch.append(((name, recipe), Command(*args, env=env)))
    results = run_cli_batch([command for _, command in batch], root, env={"VAEZOO_DEBUG": None, "OMP_NUM_THREADS": "1"})
    for (case, _), result in zip(batch, results):
        cases[case] = (*cases[case], result)
    return cases


@pytest.mark.parametrize(("name", "recipe"), CLI_CASES)
def test_cli_bad_image_exit_2_one_line_naming_the_file(bad_image_runs: dict, name: str, recipe: str) -> None:
    case = bad_image_runs[name, recipe]
    if isinstance(case, str):
        pytest.skip(case)
    folder, bad, result = case
    assert recipe in result.args and str(bad.parents[2]) in result.args
    lines = error_lines(result.stderr)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("vaezoo: error: ") and str(bad) in lines[0], result.stderr
    assert "internal error" not in lines[0] and "Traceback" not in result.stderr
    assert not (folder / "run" / "model.safetensors").exists()


def test_cli_run_after_adding_images_does_not_use_the_old_cache(tmp_path, monkeypatch):
    """A cache written by another process before images were added is replaced by the next run's."""
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    assert len(load_split(CIFAR10(root=root), "train")[0]) == 10
    for index in range(6):
        _png(root / "train" / "cat" / f"new{index}.png", seed=200 + index)
    args = ["--data-dir", str(root), "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"), *TINY_ARGS]
    result = run_cli(
        "run", "cifar-vae", *args, env={"VAEZOO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = list((tmp_path / "cache").glob("*-train-*.safetensors"))
    assert len(files) == 1, "the old cache file was not replaced"
    with safe_open(files[0], framework="pt") as file:
        assert file.get_slice("images").get_shape()[0] == 16
