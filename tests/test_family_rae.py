"""The `rae` family (RAE-L2, Ghosh et al. 2020): the model contract, the objective's terms, the ex-post
Gaussian mixture (its density against torch.distributions, recovering a known mixture by online EM,
samples with the statistics of the codes, the global batch's update under 2 ranks), and end to end on
real CIFAR-10 (run, sample, eval, bit-exact resume, --nproc 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from familyrun import Family, metrics, on_two_ranks, tiny_components
from safetensors.torch import load_file
from tinydata import TINY_SETS

from vaezoo.testing import check_model
from vaezoo_defaults.rae.mixture import OnlineGaussianMixture
from vaezoo_defaults.rae.model import RAE

DIM = 4


def components() -> dict:
    return tiny_components(DIM, prior=False, decoder_loss=True)


def test_contract():
    model = check_model(RAE, latent_dim=DIM, components=components(), batch=4, mixture_components=3)
    assert model.objective == "rae" and model.regularizer == "regularization"
    assert bool(model.mixture.ready)  # check_model's training steps fitted the mixture


def test_loss_is_reconstruction_plus_latent_and_decoder_penalties():
    torch.manual_seed(0)
    model = RAE(**components(), in_shape=(3, 32, 32), latent_dim=DIM, latent_weight=0.3, decoder_l2=0.05).eval()
    x = torch.rand(5, 3, 32, 32)
    parts = model(x)
    with torch.no_grad():
        z = model.encoder(x)[0]
        recon = model.loss.nll(x, model.decoder(z))
    l2 = sum(float((p.detach().double() ** 2).sum()) for p in model.decoder.parameters())
    assert torch.allclose(parts.recon, recon)
    assert torch.allclose(parts.terms["latent_l2"], 0.3 * 0.5 * (z**2).sum(1))
    assert torch.allclose(parts.terms["decoder_l2"], torch.full((5,), 0.05 * l2))
    assert torch.allclose(parts.loss, recon + 0.3 * 0.5 * (z**2).sum(1) + 0.05 * l2)
    assert torch.allclose(parts.kl, parts.terms["latent_l2"] + parts.terms["decoder_l2"])
    model.zero_grad()
    (0.05 * model.decoder_norm()).backward()  # L_REG's gradient is 2 lambda theta
    assert all(torch.allclose(p.grad, 2 * 0.05 * p.detach()) for p in model.decoder.parameters())


def two_blobs(n: int, gen: torch.Generator) -> torch.Tensor:
    """0.3 N((-3, 0), diag(0.25, 1)) + 0.7 N((3, 1), [[1, 0.6], [0.6, 1]])."""
    first = torch.rand(n, generator=gen) < 0.3
    a = torch.randn(n, 2, generator=gen) * torch.tensor([0.5, 1.0]) + torch.tensor([-3.0, 0.0])
    b = torch.randn(n, 2, generator=gen) @ torch.linalg.cholesky(
        torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    ).t() + torch.tensor([3.0, 1.0])
    return torch.where(first.unsqueeze(1), a, b)


def fitted(components: int, steps: int = 300) -> OnlineGaussianMixture:
    gen = torch.Generator().manual_seed(0)
    mixture = OnlineGaussianMixture(components=components, dim=2, decay=0.95)
    for _ in range(steps):
        mixture.update(two_blobs(256, gen))
    return mixture


def test_online_em_recovers_a_known_two_component_mixture():
    log_weight, mean, chol = fitted(2).mixture()
    order = mean[:, 0].argsort()
    weight, mean, cov = log_weight.exp()[order], mean[order], (chol @ chol.transpose(1, 2))[order]
    assert torch.allclose(weight, torch.tensor([0.3, 0.7], dtype=weight.dtype), atol=0.05)
    assert torch.allclose(mean, torch.tensor([[-3.0, 0.0], [3.0, 1.0]], dtype=mean.dtype), atol=0.15)
    assert torch.allclose(
        cov, torch.tensor([[[0.25, 0.0], [0.0, 1.0]], [[1.0, 0.6], [0.6, 1.0]]], dtype=cov.dtype), atol=0.2
    )


def test_log_prob_is_the_mixture_density():
    mixture = fitted(3, steps=20)
    log_weight, mean, chol = mixture.mixture()
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_weight),
        torch.distributions.MultivariateNormal(mean, scale_tril=chol),
    )
    z = torch.randn(50, 2, dtype=torch.float64) * 3
    assert torch.allclose(mixture.log_prob(z).double(), reference.log_prob(z), atol=1e-4)


def test_ten_component_samples_match_the_codes_they_were_fitted_to():
    mixture = fitted(10)
    torch.manual_seed(1)
    samples = mixture.sample(20000)
    codes = two_blobs(20000, torch.Generator().manual_seed(9))
    assert torch.allclose(samples.mean(0), codes.mean(0), atol=0.08)
    assert torch.allclose(torch.cov(samples.t()), torch.cov(codes.t()), atol=0.2)
    assert ((samples[:, 0] < 0).float().mean() - 0.3).abs() < 0.02  # the mass of the left blob
    true_density = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.3, 0.7])),
        torch.distributions.MultivariateNormal(
            torch.tensor([[-3.0, 0.0], [3.0, 1.0]]), torch.tensor([[[0.25, 0.0], [0.0, 1.0]], [[1.0, 0.6], [0.6, 1.0]]])
        ),
    )
    assert (
        abs(mixture.log_prob(codes).mean().item() - true_density.log_prob(codes).mean().item()) < 0.05
    )  # nats per code


MIXTURE_RUNNER = """
import os, torch, torch.distributed as dist
from vaezoo_defaults.rae.mixture import OnlineGaussianMixture
rank = int(os.environ["RANK"])
gen = torch.Generator().manual_seed(0)
batches = [torch.randn(37, 3, generator=gen) + torch.arange(37).unsqueeze(1) / 10 for _ in range(5)]
def fit(parts):
    mixture = OnlineGaussianMixture(components=4, dim=3, decay=0.5)
    for z in parts:
        mixture.update(z)
    return mixture
whole, own_half = fit(batches), fit([b.tensor_split(2)[rank] for b in batches])
dist.init_process_group("gloo")
joint = fit([b.tensor_split(2)[rank] for b in batches])
same = all(torch.allclose(getattr(joint, k), getattr(whole, k), atol=1e-5) for k in ("s0", "s1", "s2"))
print(f"rank {rank} same_as_whole_batch={same} own_half_differs={not torch.allclose(own_half.s1, whole.s1, atol=1e-3)}")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_mixture_learns_from_the_global_batch(tmp_path):
    """Two ranks with 19 and 18 of 37 codes per step fit the mixture one process fits on all 37."""
    stdout = on_two_ranks(tmp_path, MIXTURE_RUNNER)
    for rank in (0, 1):
        assert f"rank {rank} same_as_whole_batch=True own_half_differs=True" in stdout, stdout


# ---- real CIFAR-10, tiny widths ----

FAMILY = Family("cifar-rae", [*TINY_SETS, "train.test_limit=32"])


straight = FAMILY.straight_fixture()


def test_run_sample_eval_on_cifar(cifar: Path, straight: Path, tmp_path: Path) -> None:
    last = metrics(straight)[-1]
    assert "test_regularization" in last and "test_kl" not in last and "test_bits_per_dim" not in last
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_regularization"])
    assert math.isfinite(last["test_terms"]["mixture_nll"])
    saved = load_file(straight / "model.safetensors")
    assert saved["mixture.ready"].item() == 1  # the fitted mixture travels with the weights
    report = json.loads(FAMILY.sample_and_eval(straight, cifar, tmp_path))
    assert report["objective"] == "rae" and report["regularizer"] == "regularization" and math.isfinite(report["loss"])


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    assert {"mixture.s0", "mixture.s2"} <= load_file(straight / "model.safetensors").keys()
    FAMILY.assert_resume_is_bit_exact(cifar, straight, tmp_path)


@pytest.mark.slow
def test_nproc_2_writes_one_set_of_files(cifar: Path, tmp_path: Path) -> None:
    FAMILY.nproc(cifar, tmp_path / "run")
    assert load_file(tmp_path / "run" / "model.safetensors")["mixture.ready"].item() == 1
