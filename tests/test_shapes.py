"""Any data shape a dataset declares: a real dataset plugin (a distribution with entry points on
PYTHONPATH) reading `.npz` files made from real CIFAR-10 images, with 2 channels at 28x28, 4 channels at
64x64 and a 1-D signal (2, 1, 32), trains one tiny epoch through the CLI, then samples, evaluates and
resumes, all in one process; its `path` key names a file relative to the data root (never the current
folder). A dataset declaring (C, L) and a size a family cannot take are one line each."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import Command, run_cli_batch
from tinydata import error_lines

PLUGIN = '''
from pathlib import Path

import numpy as np
import torch

import vaezoo
from vaezoo.data import contents_key
from vaezoo.errors import DataError


class NpzImages(vaezoo.Dataset):
    """uint8 arrays `train` and `test` of shape (N, C, H, W) in an .npz file; a 1-D signal has H = 1."""

    path_keys = ("path",)

    def __init__(self, *, root, path: str = "data.npz", channels: int = 2, height: int = 16, width: int = 16):
        super().__init__(root=root)
        self.file = Path(path)  # vaezoo passes a path key relative to the data root
        self.shape = (channels, height, width)

    def cache_key(self) -> str:
        return f"npz:{self.file}:{self.shape}:{contents_key([self.file])}"

    def load(self, split):
        if not self.file.is_file():
            raise DataError(f"no file {self.file}: make it, or set dataset.path")
        with np.load(self.file) as arrays:
            images = torch.from_numpy(arrays[split])
        return images, torch.zeros(len(images), dtype=torch.int64)


class FlatSignal(NpzImages):
    """Declares a 1-D signal as (C, L), which vaezoo refuses with the fix: (C, 1, L)."""

    def __init__(self, *, root, path: str = "data.npz"):
        super().__init__(root=root, path=path)
        self.shape = (2, 32)


TINY = {"epochs": 1, "batch_size": 16, "sample_count": 4, "eval_batch_size": 64, "limit": 64, "test_limit": 32}


@vaezoo.hookimpl
def register_datasets(register):
    register("npz-images", NpzImages)
    register("flat-signal", FlatSignal)


@vaezoo.hookimpl
def register_recipes(register):
    common = {"latent_dim": 4, "prior": {"name": "normal"}, "loss": {"name": "bce-kl"}, "train": TINY}
    register("npz-conv", {
        **common,
        "dataset": {"name": "npz-images"},
        "encoder": {"name": "conv", "hidden": [4, 8]},
        "decoder": {"name": "conv", "hidden": [8, 4]},
    })
    register("npz-signal", {
        **common,
        "dataset": {"name": "npz-images", "height": 1, "width": 32},
        "encoder": {"name": "mlp", "hidden": [16]},
        "decoder": {"name": "mlp", "hidden": [16]},
    })
    register("flat-signal", {**common, "dataset": {"name": "flat-signal"}, "encoder": {"name": "mlp", "hidden": [8]},
                             "decoder": {"name": "mlp", "hidden": [8]}})
'''

# run folder -> (recipe, the --set options of its dataset, the data's shape)
SHAPES = {
    "two": ("npz-conv", ["dataset.path=two.npz", "dataset.channels=2", "dataset.height=28", "dataset.width=28"]),
    "four": ("npz-conv", ["dataset.path=sub/four.npz", "dataset.channels=4", "dataset.height=64", "dataset.width=64"]),
    "signal": ("npz-signal", ["dataset.path=signal.npz", "dataset.channels=2"]),
}


def install_plugin(root: Path) -> dict[str, str]:
    """The distribution `shape-datasets` 0.1 (module shape_datasets) in `root`; the environment that finds it."""
    info = root / "shape_datasets-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shape-datasets\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[vaezoo]\nshape-datasets = shape_datasets\n", encoding="utf-8")
    (root / "shape_datasets.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}


def write_npz_files(cifar: Path, data: Path) -> None:
    """From 64 train and 32 test CIFAR-10 images: two.npz (R and G, centre-cropped to 28x28), sub/four.npz
    (RGB and gray, 64x64) and signal.npz (R and G of the middle row: (2, 1, 32))."""
    from PIL import Image

    def read(split: str, count: int) -> np.ndarray:  # (count, 3, 64, 64), from every class
        per_class = -(-count // 10)
        files = [f for folder in sorted((cifar / split).iterdir()) for f in sorted(folder.iterdir())[:per_class]]
        pictures = [np.asarray(Image.open(f).convert("RGB").resize((64, 64))) for f in files[:count]]
        return np.stack(pictures).transpose(0, 3, 1, 2)

    def save(name: str, arrays: dict[str, np.ndarray]) -> None:
        np.savez(
            data / name, **{split: np.ascontiguousarray(images, dtype=np.uint8) for split, images in arrays.items()}
        )

    (data / "sub").mkdir(parents=True)
    big = {"train": read("train", 64), "test": read("test", 32)}
    small = {split: images[:, :, ::2, ::2] for split, images in big.items()}  # 32x32
    save("two.npz", {split: images[:, :2, 2:30, 2:30] for split, images in small.items()})
    save("sub/four.npz", {split: np.concatenate([v, v.mean(1, keepdims=True)], 1) for split, v in big.items()})
    save("signal.npz", {split: images[:, :2, 16:17, :] for split, images in small.items()})


@pytest.fixture(scope="module")
def shape_runs(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """Each shape trained one epoch, sampled, evaluated and resumed to epoch 2 (one process), from a
    current folder that holds none of the data files; then the refusals (a size the family cannot take:
    before the data, 28x28, is read)."""
    root = tmp_path_factory.mktemp("shapes")
    env = install_plugin(root / "site")
    data, elsewhere = root / "data", root / "elsewhere"
    write_npz_files(cifar, data)
    elsewhere.mkdir()
    commands = []
    for run, (recipe, sets) in SHAPES.items():
        options = [arg for item in sets for arg in ("--set", item)]
        out, model = root / run, str(root / run / "model.safetensors")
        commands += [
            ["run", recipe, *options, "--data-dir", str(data), "--device", "cpu", "--out", str(out)],
            ["sample", model, "-n", "4", "--out", str(out / "drawn.png")],
            ["eval", model, "--data-dir", str(data), "--set", sets[0], "--json"],
            ["run", recipe, "--resume", str(out), "--epochs", "2", "--data-dir", str(data), "--device", "cpu"],
        ]
    commands += [
        ["run", "flat-signal", "--data-dir", str(data), "--device", "cpu", "--out", str(root / "flat")],
        ["run", "npz-conv", *[f"--set=dataset.{key}" for key in ("path='two.npz'", "height=30", "width=30")]]
        + ["--data-dir", str(data), "--device", "cpu", "--out", str(root / "odd")],
    ]
    results = run_cli_batch([Command(*c, cwd=elsewhere) for c in commands], root, env=env)
    return root, results


@pytest.mark.parametrize("run", SHAPES)
def test_a_dataset_of_any_shape_trains_samples_evaluates_and_resumes(shape_runs: tuple[Path, list], run: str) -> None:
    from PIL import Image

    root, results = shape_runs
    index = list(SHAPES).index(run)
    trained, sampled, evaluated, resumed = results[4 * index : 4 * index + 4]
    for result in (trained, sampled, evaluated, resumed):
        assert result.returncode == 0, (result.args, result.stderr[-2000:])
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    out = root / run
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in metrics] == [1, 2]
    assert json.loads(evaluated.stdout)["loss"] > 0
    channels, height, width = {"two": (2, 28, 28), "four": (4, 64, 64), "signal": (2, 1, 32)}[run]
    tile_height, tile_width = max(height, 8), channels * (width + 1) - 1  # channels side by side; strips stretched
    for name in ("samples.png", "reconstructions.png", "drawn.png"):
        picture = Image.open(out / name)
        assert picture.mode == "RGB"
        assert (picture.height - 2) % (tile_height + 2) == 0 and (picture.width - 2) % (tile_width + 2) == 0, name


def test_a_dataset_shape_with_two_sides_and_a_size_the_family_cannot_take_are_one_line(
    shape_runs: tuple[Path, list],
) -> None:
    _, results = shape_runs
    flat, odd = results[-2:]
    assert flat.returncode == 2 and error_lines(flat.stderr) == [
        "vaezoo: error: dataset 'flat-signal' declares shape (2, 32), two sides: declare a 1-D signal of C "
        "channels and length L as (C, 1, L), here (2, 1, 32)"
    ]
    assert odd.returncode == 2 and error_lines(odd.stderr) == [
        "vaezoo: error: cannot build encoder 'conv': conv needs at least one level and H, W divisible by 4 for 2 "
        "stride-2 levels, got (2, 30, 30)"
    ]
