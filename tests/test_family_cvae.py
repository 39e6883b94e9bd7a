"""The `cvae` family (class-conditional VAE): the contract, its parameters, that the labels reach the
encoder and the decoder, and a few training steps of `cifar-cvae` on real CIFAR-10 whose run files and
checkpoint go through `vaezoo sample --label` and `vaezoo eval --iw-samples` in fresh processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_cli_batch
from familyrun import Family
from PIL import Image

import vaezoo
from vaezoo.testing import check_model
from vaezoo.trainer.evaluate import evaluate
from vaezoo_defaults.bce.loss import BCEKL
from vaezoo_defaults.conv.model import ConvDecoder, ConvEncoder
from vaezoo_defaults.cvae.model import ConditionalVAE
from vaezoo_defaults.normal.prior import NormalPrior

TILE, PAD = 32, 2  # CIFAR-10 tiles, vaezoo.files.png.grid padding
TINY = ["model.encoder_hidden=[8,16,16]", "model.decoder_hidden=[16,16,8]", "latent_dim=8"]
SAMPLES_PER_CLASS = 2


def parts(latent_dim: int) -> dict:
    return {"prior": NormalPrior(latent_dim=latent_dim), "loss": BCEKL()}


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def png_pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) of a grid of 32x32 tiles with 2-pixel padding around every tile."""
    return columns * (TILE + PAD) + PAD, rows * (TILE + PAD) + PAD


def test_contract() -> None:
    model = check_model(
        ConditionalVAE,
        num_classes=10,
        latent_dim=6,
        components=parts(6),
        encoder_hidden=[8, 16, 16],
        decoder_hidden=[16, 16, 8],
    )
    assert model.conditional and not model.discrete


def test_parameters_are_the_conv_vae_plus_the_label_paths() -> None:
    """The same conv networks as cifar-vae; the labels add their embeddings, label_channels input
    channels of the first 4x4 conv, and label_dim inputs of the decoder's linear layer."""
    latent, channels, dim = 20, 4, 16
    model = ConditionalVAE(
        in_shape=(3, 32, 32), num_classes=10, latent_dim=latent, label_channels=channels, label_dim=dim, **parts(latent)
    )
    plain = ConvEncoder(in_shape=(3, 32, 32), latent_dim=latent), ConvDecoder(out_shape=(3, 32, 32), latent_dim=latent)
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    extra = 10 * channels + channels * 32 * 4 * 4 + 10 * dim + dim * 128 * 4 * 4
    assert count(model) == count(*plain) + extra


def test_encoder_sees_the_label_as_input_channels() -> None:
    """The per-class shortcut of the first convolution gives the numbers of the conv encoder run over
    the image concatenated with the broadcast class embedding (zero padding at the borders included)."""
    model = ConditionalVAE(in_shape=(3, 32, 32), num_classes=10, latent_dim=8, **parts(8))
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([0, 3, 9, 3, 7])
    channels = model.encoder_label(y)[:, :, None, None].expand(-1, -1, 32, 32)
    with torch.no_grad():
        for got, expected in zip(model.posterior(x, y), model.encoder(torch.cat([x, channels], dim=1))):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_needs_classes() -> None:
    with pytest.raises(ValueError, match="num_classes > 0"):
        ConditionalVAE(in_shape=(3, 32, 32), num_classes=0, latent_dim=4, **parts(4))


# A few training steps of cifar-cvae (tiny widths) on 300 real CIFAR-10 images.
FAMILY = Family(
    "cifar-cvae",
    [*TINY, "train.test_limit=100", "train.batch_size=50", f"train.sample_count={10 * SAMPLES_PER_CLASS}"],
    limit=300,
)


@pytest.fixture(scope="module")
def run(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return FAMILY.run(cifar, tmp_path_factory.mktemp("cvae-run"), 1)


def test_run_pictures(run: Path) -> None:
    assert png_size(run / "samples.png") == grid_size(10, SAMPLES_PER_CLASS)  # one row per class
    assert png_size(run / "reconstructions.png") == grid_size(4, 8)
    assert png_size(run / "interpolations.png") == grid_size(8, 10)


def test_labels_reach_the_model(run: Path, cifar: Path) -> None:
    model = vaezoo.load(run / "model.safetensors")
    images, labels = vaezoo.api.load_split_images(model, "test", cifar, limit=100)
    wrong = (labels + 1) % 10
    true_loss, wrong_loss = (evaluate(model, images, y, seed=0)["loss"] for y in (labels, wrong))
    assert abs(true_loss - wrong_loss) > 1e-3, "the loss does not depend on the labels"

    def draw(label: int) -> torch.Tensor:
        torch.manual_seed(0)
        return model.sample(4, torch.full((4,), label))

    assert torch.equal(draw(3), draw(3))
    assert (draw(3) - draw(5)).abs().max() > 1e-3, "the same noise gives the same images for two labels"


UNKNOWN_LABELS = ["dragon", "10"]


@pytest.fixture(scope="module")
def labelled_samples(run: Path, small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`vaezoo sample --label L` of the run's model for L = cat, 3 and each of UNKNOWN_LABELS, and of an
    unconditional model (conftest's small cifar-vae) for cat: one fresh process. Label -> (picture, result)."""
    root = tmp_path_factory.mktemp("labels")
    model = str(run / "model.safetensors")
    jobs = {label: (model, root / f"{label}.png") for label in ("cat", "3", *UNKNOWN_LABELS)}
    jobs["unconditional"] = (str(small_model), root / "unconditional.png")
    commands = [
        ["sample", path, "--label", "cat" if label == "unconditional" else label, "-n", "16", "--out", str(out)]
        for label, (path, out) in jobs.items()
    ]
    return {label: (out, result) for (label, (_, out)), result in zip(jobs.items(), run_cli_batch(commands, root))}


def test_sample_label_by_name_or_index(labelled_samples: dict) -> None:
    (by_name, named), (by_index, indexed) = labelled_samples["cat"], labelled_samples["3"]
    for result in (named, indexed):
        assert result.returncode == 0, result.stderr
    assert "class 'cat'" in indexed.stderr
    assert png_size(by_name) == grid_size(4, 4)
    assert torch.equal(png_pixels(by_name), png_pixels(by_index))


@pytest.mark.parametrize("label", UNKNOWN_LABELS)
def test_unknown_label(labelled_samples: dict, label: str) -> None:
    out, result = labelled_samples[label]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"unknown label {label!r}" in lines[0] and "cat" in lines[0]
    assert not out.exists()


def test_label_on_an_unconditional_model(labelled_samples: dict) -> None:
    out, result = labelled_samples["unconditional"]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "not conditional" in lines[0]
    assert not out.exists()


def test_importance_weighted_nll_is_below_the_elbo(run, cifar: Path) -> None:
    result = run_cli(
        "eval",
        str(run / "model.safetensors"),
        "--data-dir",
        str(cifar),
        "--limit",
        "100",
        "--iw-samples",
        "20",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 100 and report["iw_samples"] == 20
    assert abs(report["loss"] - (report["recon"] + report["kl"])) < 1e-2
    assert report["iw_nll"] <= report["loss"] + 0.5
