"""The `beta-tcvae` family (Chen et al. 2018): the KL decomposition adds up to the one-sample KL, the
minibatch estimators against brute force (MSS unbiased for q(z), MWS's constant offset), total
correlation ~0 for a factorised aggregate posterior and > 0 for a correlated one, the model contract,
and runs on real CIFAR-10 (train, sample, eval with the terms, bit-exact resume, --nproc 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from familyrun import Family, metrics, tiny_components
from tinydata import TINY_SETS

from vaezoo.components import gaussian_log_prob
from vaezoo.testing import check_model
from vaezoo_defaults.tcvae.model import BetaTCVAE, decompose, log_importance_weights

LATENT = 4


def small_model(**keys) -> BetaTCVAE:
    torch.manual_seed(0)
    return BetaTCVAE(in_shape=(3, 32, 32), latent_dim=LATENT, **tiny_components(LATENT), **keys)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)


def posteriors(n: int, dim: int, *, correlated: bool = False, std: float = 0.3, seed: int = 0):
    """Means, log-variances and one sample each for n posteriors; the means' dimensions are
    independent N(0, 1), or one shared N(0, 1) value plus a little noise (`correlated`)."""
    g = torch.Generator().manual_seed(seed)
    mu = (
        torch.randn(n, 1, generator=g).expand(n, dim) + 0.05 * torch.randn(n, dim, generator=g)
        if correlated
        else torch.randn(n, dim, generator=g)
    )
    logvar = torch.full((n, dim), 2 * math.log(std))
    return mu, logvar, mu + std * torch.randn(n, dim, generator=g)


def brute_force(z, mu, logvar):
    """log q(z_i) and sum_j log q(z_ij) of the aggregate posterior q(z) = 1/N sum_n q(z | x_n), from
    every pair, one dimension at a time."""
    n = len(mu)
    log_qz = torch.stack([torch.logsumexp(gaussian_log_prob(z[i], mu, logvar), 0) for i in range(n)]) - math.log(n)
    log_prod = sum(
        torch.stack(
            [
                torch.logsumexp(gaussian_log_prob(z[i, d : d + 1], mu[:, d : d + 1], logvar[:, d : d + 1]), 0)
                for i in range(n)
            ]
        )
        - math.log(n)
        for d in range(z.shape[1])
    )
    return log_qz, log_prod


def test_contract():  # the estimator does not change the contract (mws: the tests below); check_model takes ~25 s
    model = check_model(BetaTCVAE, latent_dim=LATENT, components=tiny_components(LATENT), dataset_size=1000)
    assert model.objective == "elbo" and model.regularizer == "kl" and not model.applies_kl_weight


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_mi_tc_dwkl_add_up_to_the_one_sample_kl(estimator):
    mu, logvar, z = posteriors(300, 5)
    parts = decompose(z, mu, logvar, standard_normal_log_prob(z), dataset_size=50000, estimator=estimator)
    one_sample_kl = gaussian_log_prob(z, mu, logvar) - standard_normal_log_prob(z)
    assert torch.allclose(parts["mi"] + parts["tc"] + parts["dwkl"], one_sample_kl, atol=1e-4)


def test_with_unit_weights_training_is_the_one_sample_negative_elbo():
    """alpha = beta = gamma = 1: the objective is recon + log q(z|x) - log p(z) on the same sample, and
    its KL part averages over samples to the closed-form KL (evaluation's kl)."""
    model = small_model(alpha=1.0, beta=1.0, gamma=1.0, dataset_size=1000)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(5)
        parts = model(x, step=3)
        mu, logvar = model.encoder(x)
        torch.manual_seed(5)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = model.loss.nll(x, model.decoder(z))
        expected = recon + gaussian_log_prob(z, mu, logvar) - standard_normal_log_prob(z)
        assert torch.allclose(parts.loss, expected, rtol=1e-5, atol=1e-3)
        closed_form = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        assert torch.allclose(parts.kl, closed_form, atol=1e-5)
        torch.manual_seed(6)
        draws = model(
            x.repeat(200, 1, 1, 1), step=3
        )  # 200 samples of each image in one batch: the sum does not depend on the batch
        one_sample_kl = (draws.loss - draws.recon).view(200, 4)
        evaluation = model(x, step=None)
    assert torch.allclose(
        evaluation.loss, evaluation.recon + closed_form, atol=1e-3
    )  # step None: recon + closed-form KL
    error = (one_sample_kl.mean(0) - closed_form).abs()
    assert (error < 4 * one_sample_kl.std(0) / math.sqrt(200) + 1e-3).all(), (error, one_sample_kl.std(0))
    weighted = small_model(beta=6.0, dataset_size=1000)
    with torch.no_grad():
        torch.manual_seed(5)
        parts = weighted(x, step=3)
    t = parts.terms
    assert torch.allclose(parts.loss, parts.recon + t["mi"] + 6 * t["tc"] + t["dwkl"], atol=1e-3)


def test_mss_weights_rows_sum_to_one_with_the_stratum_on_every_row():
    w = log_importance_weights(6, 100).exp()
    assert torch.allclose(w.sum(1), torch.ones(6))
    assert torch.allclose(w.diagonal(), torch.full((6,), 1 / 100))
    strata = w[torch.arange(6), (torch.arange(6) + 1) % 6]  # the last row's too (the official code misses it)
    assert torch.allclose(strata, torch.full((6,), (100 - 5) / (100 * 5)))


def test_whole_data_set_batch_matches_brute_force():
    """With the batch = the data set (N = B), MSS is the exact aggregate posterior up to its weights
    1/(B-1) vs 1/B, and MWS is exactly log N below it (the paper's constant)."""
    mu, logvar, z = posteriors(60, 3, std=0.5)
    log_qz, log_prod = brute_force(z, mu, logvar)
    log_pz = standard_normal_log_prob(z)
    mss = decompose(z, mu, logvar, log_pz, dataset_size=60, estimator="mss")
    step = 2 * math.log(60 / 58)  # the weights' difference (1/59 instead of 1/60; one at 1/3540), per factor
    assert (mss["log_qz"] - log_qz).abs().max() < step and (mss["log_prod_qz"] - log_prod).abs().max() < 3 * step
    mws = decompose(z, mu, logvar, log_pz, dataset_size=60, estimator="mws")
    assert torch.allclose(mws["log_qz"], log_qz - math.log(60), atol=1e-4)
    assert torch.allclose(mws["log_prod_qz"], log_prod - 3 * math.log(60), atol=1e-4)
    assert torch.allclose(mws["tc"], log_qz - log_prod + 2 * math.log(60), atol=1e-4)


@pytest.mark.parametrize("row", [0, 7])
def test_mss_is_an_unbiased_estimate_of_the_aggregate_density(row):
    """For a fixed image and its sample, the MSS density averaged over random batches (the other images
    drawn without replacement) is q(z) = 1/N sum_n q(z | x_n), jointly and for one dimension's marginal
    (row 7: the last row's stratum, which the official code's weight matrix misses)."""
    n, batch, dim, draws = 40, 8, 2, 2000
    mu, logvar, z = posteriors(n, dim, std=0.4, seed=3)
    log_qz, _ = brute_force(z, mu, logvar)
    exact_first = torch.logsumexp(gaussian_log_prob(z[0, :1], mu[:, :1], logvar[:, :1]), 0) - math.log(n)
    g = torch.Generator().manual_seed(4)
    joint, first = [], []
    for _ in range(draws):
        others = 1 + torch.randperm(n - 1, generator=g)[: batch - 1]
        index = torch.cat([others[:row], torch.zeros(1, dtype=torch.long), others[row:]])  # image 0 at position `row`
        joint.append(decompose(z[index], mu[index], logvar[index], torch.zeros(batch), dataset_size=n)["log_qz"][row])
        first.append(
            decompose(z[index, :1], mu[index, :1], logvar[index, :1], torch.zeros(batch), dataset_size=n)["log_qz"][row]
        )
    assert torch.logsumexp(torch.stack(joint), 0).item() - math.log(draws) == pytest.approx(log_qz[0].item(), abs=0.04)
    assert torch.logsumexp(torch.stack(first), 0).item() - math.log(draws) == pytest.approx(
        exact_first.item(), abs=0.04
    )


def test_total_correlation_is_zero_for_a_factorised_posterior_and_positive_for_a_correlated_one():
    for estimator in ("mss", "mws"):
        offset = 0.0 if estimator == "mss" else 2 * math.log(1000)  # MWS's (D - 1) log N
        tcs = {}
        for correlated in (False, True):
            mu, logvar, z = posteriors(1000, 3, correlated=correlated)
            tcs[correlated] = (
                decompose(z, mu, logvar, standard_normal_log_prob(z), dataset_size=1000, estimator=estimator)["tc"]
                .mean()
                .item()
                - offset
            )
        assert abs(tcs[False]) < 0.15, (estimator, tcs)
        assert tcs[True] > 1.5, (estimator, tcs)


def test_rejects_bad_keys():
    for keys in ({"beta": -1.0}, {"dataset_size": 0}, {"estimator": "exact"}, {"gamma": math.inf}):
        with pytest.raises(ValueError):
            small_model(**keys)


# ---- real CIFAR-10, tiny widths ----

FAMILY = Family("cifar-beta-tcvae", [*TINY_SETS, "train.test_limit=32", "model.dataset_size=64"])


straight = FAMILY.straight_fixture()


def test_run_sample_and_eval_report_the_decomposition(cifar: Path, straight: Path, tmp_path: Path) -> None:
    last = metrics(straight)[-1]
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_kl"])
    assert set(last["test_terms"]) == {"mi", "tc", "dwkl"} and all(
        math.isfinite(v) for v in last["test_terms"].values()
    )
    report = json.loads(FAMILY.sample_and_eval(straight, cifar, tmp_path, "--iw-samples", "4"))
    text = json.dumps(report)
    assert '"tc"' in text and '"mi"' in text and '"dwkl"' in text, report


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    FAMILY.assert_resume_is_bit_exact(cifar, straight, tmp_path, "test_terms")


@pytest.mark.slow
def test_nproc_2_writes_one_set_of_files(cifar: Path, tmp_path: Path) -> None:
    (row,) = FAMILY.nproc(cifar, tmp_path / "two")
    assert set(row["test_terms"]) == {"mi", "tc", "dwkl"}
