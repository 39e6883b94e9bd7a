"""The `iaf-vae` family (Kingma et al. 2016): the flow's log-determinant against autograd's Jacobian,
MADE's autoregressive masks, the importance-weighted log-likelihood against the ELBO, the model
contract, and runs on real CIFAR-10 (train, sample, eval, bit-exact resume, --nproc 2 matching one
process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from familyrun import Family, metrics, ranks_match_one_process, set_args, tiny_components
from tinydata import TINY_SETS
from torch.autograd.functional import jacobian

from vaezoo.components import LOG_2PI
from vaezoo.testing import check_model
from vaezoo_defaults.iaf.model import IAFVAE, MADE

LATENT = 4
SMALL = {"steps": 3, "context_dim": 6, "hidden": [24, 24]}


def small_model(latent: int = LATENT, **keys) -> IAFVAE:
    torch.manual_seed(0)
    model = IAFVAE(in_shape=(3, 32, 32), latent_dim=latent, **tiny_components(latent), **{**SMALL, **keys})
    with torch.no_grad():  # move the flow away from its near-identity start
        for p in model.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def images(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_contract():
    model = check_model(IAFVAE, latent_dim=LATENT, components=tiny_components(LATENT), **SMALL)
    assert model.objective == "elbo" and model.regularizer == "kl" and not model.applies_kl_weight


def test_log_q_is_the_base_density_minus_autograd_log_det():
    """log q(z_T|x) = log N(eps) - log|det dz_T/deps| with the Jacobian from autograd (eq. 10-14)."""
    model = small_model(latent=3)
    x = images(1)
    with torch.no_grad():
        mu, logvar, h = model.posterior(x)
        torch.manual_seed(7)
        z, log_q = model.flow_sample(mu, logvar, h)
        torch.manual_seed(7)
        eps = torch.randn(1, 1, 3).view(3)

    def z_of_eps(e: torch.Tensor) -> torch.Tensor:
        return model.flow((mu + torch.exp(0.5 * logvar) * e).view(1, 3), h)[0].view(3)

    assert torch.allclose(z_of_eps(eps), z.view(3), atol=1e-6)
    jac = jacobian(z_of_eps, eps)
    _, log_abs_det = torch.linalg.slogdet(jac.double())
    expected = -0.5 * (eps.pow(2) + LOG_2PI).sum() - log_abs_det
    assert log_q.item() == pytest.approx(expected.item(), abs=1e-4)
    sigma_part = 0.5 * logvar.sum()
    assert abs(log_abs_det - sigma_part) > 0.1  # the flow steps do contribute (not the Gaussian alone)


@pytest.mark.parametrize("reverse", [False, True])
def test_made_output_i_depends_only_on_inputs_before_i(reverse):
    torch.manual_seed(0)
    made = MADE(5, 3, [32, 32], reverse=reverse)
    h = torch.randn(3)
    z = torch.randn(5)
    for output in (0, 1):  # m, then s
        jac = jacobian(lambda v: made(v.view(1, 5), h.view(1, 3))[output].view(5), z)
        allowed = torch.ones(5, 5).tril(-1).bool()  # [i, j]: output i may depend on input j < i
        if reverse:
            allowed = allowed.T
        assert (jac[~allowed] == 0).all(), jac
        assert (jac[allowed].abs() > 0).all(), jac  # and it does (wide enough hidden layers)
        jac_h = jacobian(lambda c: made(z.view(1, 5), c.view(1, 3))[output].view(5), h)
        assert (jac_h.abs() > 0).all()  # the context reaches every output


def test_each_step_is_triangular_with_sigma_on_the_diagonal():
    model = small_model(latent=4)
    h = torch.randn(1, SMALL["context_dim"])
    z0 = torch.randn(1, 4)
    for t, made in enumerate(model.flow.steps):

        def step(v: torch.Tensor) -> torch.Tensor:
            m, s = made(v.view(1, 4), h)
            sigma = torch.sigmoid(s)
            return (sigma * v.view(1, 4) + (1 - sigma) * m).view(4)

        jac = jacobian(step, z0.view(4))
        triangle = jac.triu(1) if t % 2 == 0 else jac.tril(-1)  # the ordering reverses each step
        assert (triangle == 0).all()
        assert torch.allclose(jac.diagonal(), torch.sigmoid(made(z0, h)[1]).view(4))


def test_log_likelihood_with_one_sample_is_the_elbo_and_more_samples_do_not_lower_it():
    model = small_model()
    x = images(3)
    with torch.no_grad():
        torch.manual_seed(3)
        negative_elbo = model(x).loss
        torch.manual_seed(3)
        assert torch.allclose(
            model.log_likelihood(x, k=1), -negative_elbo, atol=1e-3
        )  # the same noise: the same number
        torch.manual_seed(4)
        elbos = torch.stack([-model(x).loss for _ in range(64)])
        ll = model.log_likelihood(x, k=64)
    noise = elbos.std(0) / math.sqrt(64)
    assert (ll >= elbos.mean(0) - 3 * noise).all(), (ll, elbos.mean(0), noise)
    assert (ll <= elbos.max(0).values + math.log(64)).all()  # log-mean-exp of 64 terms is below their max


def test_rejects_bad_keys():
    for keys in ({"steps": -1}, {"context_dim": 0}, {"hidden": []}, {"hidden": [0]}):
        with pytest.raises(ValueError):
            small_model(**keys)
    with pytest.raises(ValueError, match="encoder"):
        IAFVAE(in_shape=(3, 32, 32), latent_dim=4, **{**tiny_components(LATENT), "encoder": torch.nn.Identity()})


# ---- real CIFAR-10, tiny widths ----

SETS = [*TINY_SETS, "train.test_limit=32", "model.hidden=[16,16]", "model.context_dim=8"]
FAMILY = Family("cifar-iaf-vae", SETS)


straight = FAMILY.straight_fixture()


def test_run_sample_and_eval(cifar: Path, straight: Path, tmp_path: Path) -> None:
    last = metrics(straight)[-1]
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_kl"])
    report = json.loads(FAMILY.sample_and_eval(straight, cifar, tmp_path, "--iw-samples", "8"))
    assert math.isfinite(report["loss"]) and "nll" in json.dumps(report), report


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    FAMILY.assert_resume_is_bit_exact(cifar, straight, tmp_path)


# As tests/test_distributed.py: each rank draws its own noise, so the comparison switches it off (eps = 0).
PATCH = """
import torch
torch.randn_like = lambda t, **kw: torch.zeros_like(t, **kw)
"""
DDP = [
    *("--epochs", "1", "--batch-size", "64", "--limit", "128", "--device", "cpu", "--seed", "3"),
    *("--precision", "fp32", *set_args([s for s in SETS if not s.startswith("train.batch_size")])),
    *("--set", 'train.optimizer="sgd"', "--lr", "1e-5"),
]


@pytest.mark.slow
def test_nproc_2_matches_one_process(cifar: Path, tmp_path: Path) -> None:
    """Two ranks with 32 images each per step end within 1e-4 of one process with 64 per step (SGD,
    tiny lr, as test_ddp_matches_single_process), and write one set of files."""
    ranks_match_one_process(
        FAMILY, cifar, tmp_path, DDP, PATCH, [s for s in SETS if not s.startswith("train.")], seed=3
    )
