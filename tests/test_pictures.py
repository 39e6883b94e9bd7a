"""Pictures written by `vaezoo run` and by `vaezoo sample / reconstruct / interpolate`, the loss curve
without matplotlib, and the tensorboard logger's pictures; on a tiny model trained once for this module
(tests/test_loggers.py has the other loggers and a missing tensorboard package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import run_cli, run_cli_batch
from PIL import Image

from vaezoo.api import interpolate_file, reconstruct_file
from vaezoo.errors import VaezooError
from vaezoo.trainer.pictures import save_loss_plot

TINY = ["--set", "encoder.hidden=[8,16,32]", "--set", "decoder.hidden=[32,16,8]", "--set", "latent_dim=8"]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
TILE, PAD = 32, 2  # CIFAR-10 tiles, images.grid padding


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) of a grid of 32x32 tiles with 2-pixel padding around every tile."""
    return columns * (TILE + PAD) + PAD, rows * (TILE + PAD) + PAD


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def run_dir(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cifar-vae run of 2 epochs (with --logger tensorboard when tensorboard is installed)."""
    out = tmp_path_factory.mktemp("pictures-run")
    extra = ["--logger", "tensorboard"] if HAS_TENSORBOARD else []
    result = run_cli(
        "run",
        "cifar-vae",
        "--limit",
        "256",
        "--epochs",
        "2",
        "--set",
        "train.test_limit=64",
        *TINY,
        *extra,
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    return out


def test_run_writes_pictures_next_to_samples(run_dir: Path) -> None:
    assert png_size(run_dir / "samples.png") == grid_size(8, 8)  # 64 samples
    assert png_size(run_dir / "reconstructions.png") == grid_size(4, 8)  # 16 images above 16 reconstructions
    assert png_size(run_dir / "interpolations.png") == grid_size(8, 10)  # 8 pairs, 10 steps
    assert png_size(run_dir / "loss.png")[0] > 100


def test_reconstruct_command(run_dir: Path, cifar: Path, tmp_path: Path) -> None:
    model = run_dir / "model.safetensors"
    first = tmp_path / "a.png"
    result = run_cli("reconstruct", str(model), "-n", "5", "--seed", "3", "--out", str(first), "--data-dir", str(cifar))
    assert result.returncode == 0, result.stderr
    assert png_size(first) == grid_size(2, 5)  # one row of 5 images above one row of reconstructions
    again, other, wide = tmp_path / "b.png", tmp_path / "c.png", tmp_path / "wide.png"
    reconstruct_file(model, again, n=5, seed=3, data_dir=cifar)
    reconstruct_file(model, other, n=5, seed=4, data_dir=cifar)
    assert first.read_bytes() == again.read_bytes() and first.read_bytes() != other.read_bytes()
    reconstruct_file(model, wide, n=12, data_dir=cifar)
    assert png_size(wide) == grid_size(4, 8)  # 2 rows of images (the second padded), 2 of reconstructions


def test_interpolate_and_sample_commands(run_dir: Path, cifar: Path, tmp_path: Path) -> None:
    model = run_dir / "model.safetensors"
    lines, samples = tmp_path / "lines.png", tmp_path / "samples.png"
    interpolated, sampled = run_cli_batch(  # one fresh process
        [
            ["interpolate", str(model), "-n", "3", "--steps", "6", "--seed", "1", "--out", str(lines)]
            + ["--data-dir", str(cifar)],
            ["sample", str(model), "-n", "6", "--seed", "2", "--temperature", "0.5", "--out", str(samples)],
        ],
        tmp_path,
    )
    assert interpolated.returncode == 0, interpolated.stderr
    assert png_size(lines) == grid_size(3, 6)
    with pytest.raises(VaezooError, match="--steps"):
        interpolate_file(model, lines, steps=1, data_dir=cifar)
    assert sampled.returncode == 0, sampled.stderr
    assert png_size(samples) == grid_size(2, 3)


def test_loss_plot_is_updated_and_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    history = [{"epoch": 1, "train_loss": 2200.0, "test_loss": 2150.0}]
    assert save_loss_plot(history, tmp_path / "loss.png")
    one_epoch = (tmp_path / "loss.png").read_bytes()
    history.append({"epoch": 2, "train_loss": 2100.0, "test_loss": 2090.0})
    assert save_loss_plot(history, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes() != one_epoch
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    monkeypatch.setattr("vaezoo.trainer.pictures._notified", set())
    assert not save_loss_plot(history, tmp_path / "none.png") and not save_loss_plot(history, tmp_path / "none.png")
    err = capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
    assert err.count("\n") == 1 and "pip install 'vaezoo[plots]'" in err


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_on(run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"epoch/train_loss", "epoch/test_loss"} <= set(tags["scalars"])
    assert [event.step for event in accumulator.Scalars("epoch/test_loss")] == [1, 2]
    assert {"samples", "reconstructions", "interpolations"} <= set(tags["images"])
    # each epoch's own pictures, the last epoch's included (they once lagged one epoch behind)
    for name in ("samples", "reconstructions", "interpolations"):
        logged = accumulator.Images(name)
        assert [event.step for event in logged] == [1, 2]
        assert _same_pixels(logged[-1].encoded_image_string, run_dir / f"{name}.png")


def _same_pixels(png: bytes, path: Path) -> bool:
    import io

    import numpy as np

    with Image.open(io.BytesIO(png)) as logged, Image.open(path) as written:
        return np.array_equal(np.asarray(logged.convert("RGB")), np.asarray(written.convert("RGB")))


def test_a_grid_shows_any_channel_count_and_stretches_1d_strips() -> None:
    """1 channel is gray and 3 are RGB; any other count is one gray picture per channel side by
    side (a white column between two); a tile less than 8 pixels high (a 1-D signal) is stretched."""
    import torch

    from vaezoo.files.png import grid

    images = torch.rand(4, 4, 9, 7)
    picture = grid(images, nrow=4)
    assert tuple(picture.shape) == (PAD + 9 + PAD, PAD + 4 * (4 * 8 - 1 + PAD), 3)
    first = picture[PAD : PAD + 9, PAD : PAD + 31].float() / 255
    for channel in range(4):  # gray: R == G == B, the channel's values
        tile = first[:, channel * 8 : channel * 8 + 7]
        assert torch.equal(tile[..., 0], tile[..., 2])
        assert torch.allclose(tile[..., 0], images[0, channel], atol=1 / 255)
    assert (first[:, 7::8] == 1).all()  # the white columns between channels
    strips = grid(torch.rand(3, 2, 1, 16), nrow=3)
    assert tuple(strips.shape) == (PAD + 8 + PAD, PAD + 3 * (2 * 17 - 1 + PAD), 3)
    assert tuple(grid(torch.rand(2, 3, 8, 8), nrow=2).shape) == (PAD + 8 + PAD, PAD + 2 * (8 + PAD), 3)
