"""Samplers fitted after training: the gmm sampler's EM against a known mixture, and fit-sampler /
sample --sampler end to end on a real model file (written beside it, checked against it)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli_batch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vaezoo
from vaezoo.errors import VaezooError
from vaezoo.samplers import require_codes, training_codes
from vaezoo_defaults.samplers.gmm import GaussianMixtureSampler


def known_mixture(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` draws of three 2-D Gaussians with distinct full covariances, and their weights, means and covariances."""
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 6.0]], dtype=torch.float64)
    covariances = torch.tensor(
        [[[1.25, 0.6], [0.6, 0.5]], [[0.25, -0.1], [-0.1, 0.3]], [[0.04, 0.0], [0.0, 4.0]]], dtype=torch.float64
    )
    truth = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights), torch.distributions.MultivariateNormal(means, covariances)
    )
    torch.manual_seed(0)
    return truth.sample((n,)), weights, means, covariances


def test_gmm_recovers_a_known_mixture_and_samples_it():
    codes, weights, means, covariances = known_mixture(20_000)
    gmm = GaussianMixtureSampler(dim=2, n_components=3)
    gmm.fit(codes)
    order = gmm.means[:, 0].argsort(descending=True)[[0, 2, 1]]  # as the truth lists them: +x, -x, +y
    assert torch.allclose(gmm.log_weights.exp()[order], weights, atol=0.01)
    assert torch.allclose(gmm.means[order], means, atol=0.05)
    fitted = gmm.scale_tril[order] @ gmm.scale_tril[order].transpose(1, 2)
    assert torch.allclose(fitted, covariances, atol=0.06)
    truth = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights), torch.distributions.MultivariateNormal(means, covariances)
    )
    assert gmm.log_prob(codes).mean() == pytest.approx(truth.log_prob(codes).mean().item(), abs=0.01)
    torch.manual_seed(1)
    drawn = gmm.sample(50_000)
    assert torch.allclose(drawn.mean(0), codes.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(drawn.T), torch.cov(codes.T), rtol=0.03)
    torch.manual_seed(1)
    assert torch.equal(gmm.sample(50_000), drawn)  # torch's generator decides the draws
    assert gmm.sample(10, temperature=0.0).unique(dim=0).shape[0] <= 3  # the means alone


def test_gmm_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixtureSampler(dim=2, n_components=10**6)
    with pytest.raises(ValueError, match="too large"):
        GaussianMixtureSampler(dim=4096, n_components=10)
    with pytest.raises(ValueError, match="at least"):
        GaussianMixtureSampler(dim=2, n_components=5).fit(torch.zeros(3, 2, dtype=torch.float64))


def test_a_family_without_codes_cannot_use_a_fitted_sampler(cifar: Path):
    model = vaezoo.build("cifar-hvae", ["dataset.download=false"])
    with pytest.raises(VaezooError, match="no encode/decode"):
        require_codes(model)


def test_training_codes_are_the_codes_of_the_images_in_0_1(small_model: Path, cifar: Path):
    """The sampler is fitted to the codes `encode` gives the training images as the model saw them,
    floats in [0, 1] (they were divided by 255 twice: every code was that of a black image, and gmm
    samples decoded to black)."""
    model = vaezoo.load(small_model).eval()
    images = torch.randint(0, 256, (6, *model.in_shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        expected = model.encode(images.float() / 255, None).flatten(1).double()
        codes = training_codes(model, images, None, 4)
    assert torch.allclose(codes, expected, atol=1e-5)
    assert codes.std(0).mean() > 1e-3  # six different images, six different codes


def test_fit_sampler_and_sample_with_it_end_to_end(small_model: Path, cifar: Path, tmp_path: Path):
    model = tmp_path / "model.safetensors"
    shutil.copy(small_model, model)
    fitted = tmp_path / "model.sampler-gmm.safetensors"
    data = ["--data-dir", str(cifar)]
    first, second, prior = (tmp_path / name for name in ("gmm1.png", "gmm2.png", "prior.png"))
    results = run_cli_batch(
        [
            ["sample", str(model), "-n", "8", "--seed", "3", "--sampler", "gmm", "--out", str(first), *data],  # fits
            ["sample", str(model), "-n", "8", "--seed", "3", "--sampler", "gmm", "--out", str(second)],  # reads
            ["sample", str(model), "-n", "8", "--seed", "3", "--out", str(prior)],
            ["fit-sampler", str(model), "gmm", "--set", "n_components=3", "--limit", "200", *data],
            ["fit-sampler", str(model), "gmm", "--set", "components=3", *data],
            ["fit-sampler", str(model), "nope", *data],
            ["sample", str(model), "--sampler", "nope", *data],
        ],
        tmp_path,
    )
    fit_once, read, plain, refit, bad_key, unknown, unknown_sample = results
    for done in (fit_once, read, plain, refit):
        assert done.returncode == 0, done.stderr
    assert "fitting the gmm sampler" in fit_once.stderr and "fitting" not in read.stderr
    assert first.read_bytes() == second.read_bytes() != prior.read_bytes()
    assert "fitted gmm to 200 training codes" in refit.stderr and "mean log-likelihood" in refit.stderr
    assert load_file(fitted)["means"].shape == (3, vaezoo.load(model).recipe["latent_dim"])
    for refused, words in ((bad_key, "unknown key sampler.components"), (unknown, "unknown sampler 'nope'")):
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and words in refused.stderr, refused.stderr
    assert unknown_sample.returncode == 2 and unknown_sample.stderr.count("\n") == 1  # nothing said before it
    assert "unknown sampler 'nope'" in unknown_sample.stderr

    # a fit belongs to its model file: another file, or a damaged fit, is one line
    other = tmp_path / "other" / "model.safetensors"
    other.parent.mkdir()
    tensors = load_file(model)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    with safe_open(str(model), "pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(other), metadata=metadata)
    shutil.copy(fitted, other.parent / fitted.name)
    broken = tmp_path / "broken" / "model.safetensors"
    broken.parent.mkdir()
    shutil.copy(model, broken)
    damaged = load_file(fitted)
    damaged["means"] = torch.full_like(damaged["means"], math.nan)
    with safe_open(str(fitted), "pt") as handle:
        save_file(damaged, str(broken.parent / fitted.name), metadata=handle.metadata())
    reshaped = tmp_path / "reshaped" / "model.safetensors"  # the red team's: codes of another shape, same tensors
    reshaped.parent.mkdir()
    shutil.copy(model, reshaped)
    with safe_open(str(fitted), "pt") as handle:
        record = json.loads(handle.metadata()["vaezoo.sampler"])
        dim = record["code_shape"][0]
        record["code_shape"] = [2, dim // 2]
        forged = {"vaezoo.sampler": json.dumps(record)}
        save_file(load_file(fitted), str(reshaped.parent / fitted.name), metadata=forged)
    moved, nan, other_shape = run_cli_batch(
        [
            ["sample", str(other), "--sampler", "gmm", "--out", str(tmp_path / "x.png")],
            ["sample", str(broken), "--sampler", "gmm", "--out", str(tmp_path / "y.png")],
            ["sample", str(reshaped), "--sampler", "gmm", "--out", str(tmp_path / "z.png")],
        ],
        tmp_path,
    )
    assert moved.returncode == 2 and "fitted to another model file" in moved.stderr, moved.stderr
    assert nan.returncode == 2 and "NaN" in nan.stderr, nan.stderr
    assert other_shape.returncode == 2 and "holds codes of shape" in other_shape.stderr, other_shape.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
