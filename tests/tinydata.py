"""Helpers for the checkpoint, resume, data and CLI tests: a tiny CIFAR-10 in class folders (random
PNGs written once per session), tiny model widths, a tiny run in this process, reading a failed
command's one error line, and forging a model file's metadata. (Running the CLI: conftest.py.)"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Tiny widths so that an epoch takes a fraction of a second on a CPU.
TINY_SETS = [
    "encoder.hidden=[4,8,8]",
    "decoder.hidden=[8,8,4]",
    "latent_dim=4",
    "train.batch_size=16",
    "train.sample_count=4",
    "train.eval_batch_size=64",
]
TINY_ARGS = [arg for item in TINY_SETS for arg in ("--set", item)]


def write_class_folders(root: Path, train_per_class: int = 8, test_per_class: int = 2, seed: int = 0) -> Path:
    """`root/{train,test}/<class>/NNNN.png`: smooth random 32x32 RGB images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                Image.fromarray(small).resize((32, 32), Image.BILINEAR).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 80 + 20 image CIFAR-10 lookalike in class folders."""
    return write_class_folders(tmp_path_factory.mktemp("tiny-cifar"))


def fit_tiny(
    data_dir: Path,
    out: Path,
    epochs: int = 1,
    *,
    sets: list[str] | None = None,
    resume: Path | None = None,
    callbacks=(),
    **options,
):
    """`vaezoo.fit("cifar-vae")` with tiny widths on the tiny data, in this process, on the CPU."""
    import vaezoo

    opts = {"train.epochs": epochs, **{f"train.{k}": v for k, v in options.items()}}
    return vaezoo.fit(
        "cifar-vae",
        sets=[*TINY_SETS, *(sets or [])],
        options=opts,
        out=out,
        data_dir=data_dir,
        device="cpu",
        resume=resume,
        callbacks=callbacks,
    )


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of stderr."""
    return [line for line in stderr.splitlines() if line.strip()]


def one_line(result: subprocess.CompletedProcess, code: int = 2, progress: bool = False) -> str:
    """The one error line a failed command printed (`progress`: a run whose progress bar had started,
    and whose bar is not counted); warnings about other plugins do not count."""
    lines = [
        line
        for line in error_lines(result.stderr)
        if not line.startswith("vaezoo: warning:") and (not progress or line.startswith("vaezoo:"))
    ]
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0]


# `vaezoo run cifar-vae` options for a two-epoch tiny run on 96 CIFAR-10 images.
TWO_EPOCHS = [
    "--epochs",
    "2",
    "--limit",
    "96",
    "--set",
    "train.test_limit=32",
    "--device",
    "cpu",
    "--seed",
    "1",
    *TINY_ARGS,
]


class Raw(str):
    """A metadata value written as it is, not JSON-encoded (for JSON no encoder would write)."""


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a model file whose decoded `vaezoo.*` metadata went through `change(metadata)`."""
    data = source.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    metadata = {k: json.loads(v) for k, v in header["__metadata__"].items() if k.startswith("vaezoo.")}
    change(metadata)
    header["__metadata__"].update({k: v if isinstance(v, Raw) else json.dumps(v) for k, v in metadata.items()})
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])
    return target


def set_key(path: list[str], value):
    """A `change` for `rewrite`: the metadata value at `path` becomes `value`."""

    def change(metadata):
        node = metadata
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def training_process(cifar: Path, out: Path) -> subprocess.Popen:
    """`vaezoo run cifar-vae` (tiny, 50 epochs) in a fresh process, its stderr piped, returned once it
    has finished its first epoch (or exited): a run to send signals to."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vaezoo", "run", "cifar-vae", *TWO_EPOCHS, "--epochs", "50"]
        + ["--data-dir", str(cifar), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (out / "metrics.jsonl").exists() and process.poll() is None:  # wait until it trains
        time.sleep(0.1)
    return process
