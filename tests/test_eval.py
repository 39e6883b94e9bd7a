"""`vaezoo eval`: negative ELBO and parts, the importance-weighted (IWAE) NLL, the bits/dim rule,
reconstruction MSE and PSNR; on a tiny model trained once for this module."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_cli_batch
from torch import distributions as D

import vaezoo
from vaezoo.api import evaluate_file, load_split_images
from vaezoo.data import to_float
from vaezoo.errors import VaezooError
from vaezoo.trainer.evaluate import evaluate, evaluation_report, importance_weighted_nll

TINY = ["--set", "encoder.hidden=[8,16,32]", "--set", "decoder.hidden=[32,16,8]", "--set", "latent_dim=8"]


@pytest.fixture(scope="module")
def trained(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.safetensors of a tiny cifar-vae trained for 2 epochs on 256 images (no --tensorboard)."""
    out = tmp_path_factory.mktemp("eval-run")
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
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def test_images(cifar: Path, trained: Path) -> torch.Tensor:
    return load_split_images(vaezoo.load(trained), "test", cifar, limit=64)[0]


@pytest.fixture(scope="module")
def evaluated(trained: Path, cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """`vaezoo eval --json` (96 images, 20 importance samples) and `vaezoo eval` (the table) of the
    model, in one fresh process."""
    data = ["--data-dir", str(cifar), "--device", "cpu"]
    commands = [
        ["eval", str(trained), *data, "--limit", "96", "--iw-samples", "20", "--json"],
        ["eval", str(trained), *data, "--limit", "32"],
    ]
    return run_cli_batch(commands, tmp_path_factory.mktemp("evaluated"))


def test_eval_json_in_a_fresh_process(evaluated: list) -> None:
    result, _ = evaluated
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["images"] == 96 and metrics["split"] == "test" and metrics["iw_samples"] == 20
    assert metrics["loss"] == pytest.approx(metrics["recon"] + metrics["kl"], rel=1e-6)
    assert metrics["iw_nll"] <= metrics["loss"]
    # bce-kl is not a likelihood over the 256 pixel values: no bits/dim, and a note saying why
    assert metrics["bits_per_dim"] is None and metrics["iw_bits_per_dim"] is None
    assert "not comparable" in metrics["bits_per_dim_note"]
    assert 0 < metrics["recon_mse"] < 1
    # mean per-image PSNR >= PSNR of the mean MSE (Jensen)
    assert metrics["psnr_db"] >= 10 * math.log10(1 / metrics["recon_mse"]) - 1e-9


def test_eval_table_and_errors(trained: Path, cifar: Path, evaluated: list) -> None:
    _, result = evaluated
    assert result.returncode == 0, result.stderr
    assert (
        "loss" in result.stdout
        and "psnr_db" in result.stdout
        and "note:" in result.stdout
        and "iw_nll" not in result.stdout
    )
    with pytest.raises(VaezooError, match="iw-samples"):
        evaluate_file(trained, data_dir=cifar, iw_samples=-1)
    with pytest.raises(VaezooError, match="unknown split 'valid'"):
        evaluate_file(trained, data_dir=cifar, split="valid")


def test_run_without_tensorboard_writes_no_event_files(trained: Path) -> None:
    assert not (trained.parent / "tensorboard").exists()


def test_iw_estimate_is_never_worse_than_the_elbo(trained: Path, test_images: torch.Tensor) -> None:
    model = vaezoo.load(trained)
    elbo = evaluate(model, test_images)["loss"]
    for k in (1, 5, 50):
        iw = importance_weighted_nll(model, test_images, k)
        assert iw <= elbo + (0.5 if k == 1 else 0.0), (k, iw, elbo)  # K=1 equals the ELBO only in expectation
    # K=1 is the ELBO in expectation: the mean over seeds is close to it
    mean_k1 = sum(importance_weighted_nll(model, test_images[:16], 1, seed=s) for s in range(8)) / 8
    assert mean_k1 == pytest.approx(evaluate(model, test_images[:16])["loss"], abs=0.5)


def test_iw_matches_a_naive_computation_and_chunking_does_not_matter(
    trained: Path, test_images: torch.Tensor, monkeypatch
) -> None:
    from vaezoo_defaults.vae import model as vae_family

    model = vaezoo.load(trained)
    images, k = test_images[:4], 12
    monkeypatch.setattr(vaezoo.trainer.evaluate, "IW_IMAGES_PER_BATCH", k)  # one image per batch
    monkeypatch.setattr(vae_family, "DECODE_BATCH", 5)  # 3 decode chunks
    chunked = importance_weighted_nll(model, images, k)
    monkeypatch.setattr(vae_family, "DECODE_BATCH", k)  # 1 chunk
    whole = importance_weighted_nll(model, images, k)
    assert chunked == pytest.approx(whole, rel=1e-6)
    torch.manual_seed(0)  # the same random stream: randn(1, k, latent) per image
    total = 0.0
    with torch.no_grad():
        for x in to_float(images):
            mu, logvar = model.encoder(x[None])
            q = D.Normal(mu, torch.exp(0.5 * logvar))
            z = mu + torch.randn(1, k, mu.shape[1])[0] * torch.exp(0.5 * logvar)
            logits = model.decoder(z)
            log_px = D.Bernoulli(logits=logits, validate_args=False).log_prob(x.expand_as(logits)).flatten(1).sum(1)
            log_w = log_px + D.Normal(0.0, 1.0).log_prob(z).sum(1) - q.log_prob(z).sum(1)
            total -= (torch.logsumexp(log_w, 0) - math.log(k)).item()
    assert whole == pytest.approx(total / len(images), rel=1e-5)


def test_bits_per_dim_only_for_discrete_likelihoods(cifar: Path) -> None:
    model = vaezoo.build(
        "cifar-vae",
        sets=[
            'loss={name="dlogistic-kl", n_mix=1}',
            "encoder.hidden=[4,8,8]",
            "decoder.hidden=[8,8,4]",
            "latent_dim=4",
        ],
    )
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    report = evaluation_report(model, images, iw_samples=3)
    dims_ln2 = 3 * 32 * 32 * math.log(2)
    assert report["bits_per_dim"] == pytest.approx(report["loss"] / dims_ln2)
    assert report["iw_bits_per_dim"] == pytest.approx(report["iw_nll"] / dims_ln2)
    assert "bits_per_dim_note" not in report


def test_reconstruction_error_averages_over_every_batch() -> None:
    """recon_mse and psnr_db are means over all images, not over the last batch (a regression)."""
    import torch

    from vaezoo.components import Model
    from vaezoo.trainer.evaluate import reconstruction_error

    class Black(Model):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def reconstruct(self, x, y=None):
            return torch.zeros_like(x)

    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8)
    per_image = (images.float() / 255).pow(2).flatten(1).mean(1).double()
    got = reconstruction_error(Black(), images, batch_size=3)
    assert got["recon_mse"] == pytest.approx(per_image.mean().item(), rel=1e-6)
    assert got["psnr_db"] == pytest.approx((-10 * per_image.log10()).mean().item(), rel=1e-6)


@pytest.fixture(scope="module")
def bf16_run(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cifar-vae run folder trained in bf16 on the CPU (1 epoch, 64 images, 32 test images)."""
    from tinydata import TINY_SETS

    out = tmp_path_factory.mktemp("bf16") / "run"
    options = {"train.limit": 64, "train.test_limit": 32, "train.epochs": 1, "train.precision": "bf16"}
    vaezoo.fit("cifar-vae", sets=TINY_SETS, options=options, out=out, data_dir=cifar, device="cpu")
    return out


def test_eval_loss_is_the_runs_test_loss_in_the_precision_it_trained_in(
    bf16_run: Path, cifar: Path, tmp_path: Path
) -> None:
    """eval evaluates in the precision (and memory layout) the run evaluated in: the same number as
    test_loss on the same images; --precision fp32 gives the float32 number, fp16 on a CPU is one line."""
    test_loss = json.loads((bf16_run / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"]
    model = str(bf16_run / "model.safetensors")
    data = ["--data-dir", str(cifar), "--device", "cpu", "--limit", "32"]
    default, fp32, fp16 = run_cli_batch(
        [
            ["eval", model, *data, "--json"],
            ["eval", model, *data, "--json", "--precision", "fp32"],
            ["eval", model, *data, "--precision", "fp16"],
        ],
        tmp_path,
    )
    assert default.returncode == 0 and fp32.returncode == 0, default.stderr + fp32.stderr
    as_trained, in_fp32 = json.loads(default.stdout), json.loads(fp32.stdout)
    assert as_trained["precision"] == "bf16" and as_trained["loss"] == test_loss
    assert in_fp32["precision"] == "fp32" and in_fp32["loss"] == pytest.approx(test_loss, rel=1e-3)
    assert fp16.returncode == 2 and fp16.stderr.strip().startswith("vaezoo: error: fp16 needs a CUDA device")


def test_eval_reports_the_progress_of_each_stage(trained: Path, cifar: Path) -> None:
    """evaluate_file tells its progress per stage (the bar of `vaezoo eval` on stderr), up to the end."""
    heard: dict[str, list[tuple[int, int]]] = {}
    evaluate_file(
        trained,
        data_dir=cifar,
        limit=40,
        device="cpu",
        iw_samples=2,
        progress=lambda what, done, total: heard.setdefault(what, []).append((done, total)),
    )
    assert list(heard) == ["loss", "importance-weighted NLL", "reconstructions"]
    for reports in heard.values():
        assert reports[0] == (0, 40) and reports[-1] == (40, 40)
