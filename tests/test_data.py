"""Data: cifar10 from class folders and from the official batches, the uint8 cache, --limit subsets,
and missing data offline."""

from __future__ import annotations

import hashlib
import pickle  # only to WRITE fixtures in the official format; vaezoo itself never unpickles
import socket

import numpy as np
import pytest
import torch
from tinydata import CLASSES, fit_tiny, tiny_cifar, write_class_folders  # noqa: F401  (fixture)

from vaezoo.data import limit_subset, load_split
from vaezoo.errors import DataError
from vaezoo_defaults.cifar10.dataset import CIFAR10


def test_class_folders(tmp_path):
    root = write_class_folders(tmp_path, train_per_class=2, test_per_class=1)
    from PIL import Image

    images, labels = CIFAR10(root=root).load("train")
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    assert labels.tolist() == [i for i in range(10) for _ in range(2)]
    first = np.array(Image.open(root / "train" / "airplane" / "0000.png").convert("RGB"))
    assert torch.equal(images[0], torch.from_numpy(first).permute(2, 0, 1))
    test_images, test_labels = CIFAR10(root=root).load("test")
    assert test_images.shape == (10, 3, 32, 32) and test_labels.tolist() == list(range(10))


def _write_batches(root, per_batch=3, seed=0):
    """cifar-10-batches-py/ as torchvision reads it (pickled dicts, rows of 3072 uint8 in CHW
    order); returns {file name: md5} and the train arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sums, train = {}, []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        if name != "test_batch":
            train.append((data, labels))
        (folder / name).write_bytes(
            pickle.dumps({"batch_label": name, "labels": labels, "data": data, "filenames": []})
        )
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": list(CLASSES), "num_vis": 3072, "num_cases_per_batch": per_batch})
    )
    for path in folder.iterdir():
        sums[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return sums, train


def test_official_batches_read_by_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    sums, train = _write_batches(tmp_path)
    # torchvision only unpickles files whose md5 is the official one: declare the fake files official
    monkeypatch.setattr(
        TorchvisionCIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(TorchvisionCIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(
        TorchvisionCIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": sums["batches.meta"]}
    )
    images, labels = CIFAR10(root=tmp_path).load("train")
    assert images.dtype == torch.uint8 and images.shape == (15, 3, 32, 32)
    expected = np.concatenate([data for data, _ in train]).reshape(-1, 3, 32, 32)
    assert torch.equal(images, torch.from_numpy(expected))
    assert labels.tolist() == [label for _, batch in train for label in batch]
    assert CIFAR10(root=tmp_path).load("test")[0].shape == (3, 3, 32, 32)


def test_batches_that_are_not_the_official_files_are_not_read(tmp_path):
    _write_batches(tmp_path)  # md5s differ from the official release: never unpickled
    with pytest.raises(DataError, match="not the official CIFAR-10 release"):
        CIFAR10(root=tmp_path).load("train")


class CountingCIFAR10(CIFAR10):
    calls = 0

    def load(self, split):
        type(self).calls += 1
        return super().load(split)


def test_uint8_cache_is_used_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    root = write_class_folders(tmp_path / "data", train_per_class=1, test_per_class=1)
    dataset = CountingCIFAR10(root=root)
    images, labels = load_split(dataset, "test")
    assert CountingCIFAR10.calls == 1
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".safetensors"
    again, again_labels = load_split(CountingCIFAR10(root=root), "test")
    assert CountingCIFAR10.calls == 1, "the second load decoded the images again"
    assert torch.equal(images, again) and torch.equal(labels, again_labels) and again.dtype == torch.uint8
    cached[0].write_bytes(b"\x00garbage" * 10)
    rebuilt, _ = load_split(CountingCIFAR10(root=root), "test")
    assert CountingCIFAR10.calls == 2 and torch.equal(rebuilt, images)
    load_split(CountingCIFAR10(root=root), "test")
    assert CountingCIFAR10.calls == 2, "the rebuilt cache file is not readable"


def test_limit_is_the_same_subset_whatever_the_seed(tiny_cifar, tmp_path):
    images = torch.arange(1000).view(-1, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(1000)
    torch.manual_seed(1)
    first = limit_subset(images, labels, 50)[1]
    torch.manual_seed(2)
    assert torch.equal(first, limit_subset(images, labels, 50)[1]) and len(first.unique()) == 50

    class Grab:
        def on_start(self, run):
            raise _Seen(run.train_images.clone())

    seen = []
    for seed in (0, 7):
        with pytest.raises(_Seen) as caught:
            fit_tiny(tiny_cifar, tmp_path / f"seed{seed}", limit=40, seed=seed, callbacks=[Grab()])
        seen.append(caught.value.images)
    assert seen[0].shape[0] == 40 and torch.equal(seen[0], seen[1])


class _Seen(Exception):
    def __init__(self, images):
        super().__init__("seen")
        self.images = images


def test_download_fails_fast_with_where_to_put_files(tmp_path, monkeypatch):
    import torchvision.datasets

    timeouts = []

    class Offline:
        def __init__(self, root, train=True, download=False):
            timeouts.append(socket.getdefaulttimeout())
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError) as error:
        CIFAR10(root=tmp_path / "empty").load("train")
    message = str(error.value)
    assert (
        "\n" not in message
        and str(tmp_path / "empty") in message
        and "cifar-10-batches-py" in message
        and "class folders" in message
    )
    assert timeouts and timeouts[0] is not None and timeouts[0] <= 60, "the download has no socket timeout"
    assert socket.getdefaulttimeout() is None, "the socket timeout was not restored"
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        CIFAR10(root=tmp_path / "empty", download=False).load("train")
