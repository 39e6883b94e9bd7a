"""The `wae` family (WAE-MMD, Tolstikhin et al. 2018): the model contract, the MMD estimator against a
brute-force double loop and on distributions it must tell apart, the objective as cost + lambda * MMD,
the gather over ranks, and end to end on real CIFAR-10 (run, sample, eval, bit-exact resume, 2 ranks
against one process with the whole batch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from familyrun import Family, metrics, on_two_ranks, ranks_match_one_process, set_args, tiny_components
from tinydata import TINY_SETS

from vaezoo.testing import check_model
from vaezoo_defaults.wae.mmd import mmd_imq
from vaezoo_defaults.wae.model import WAE

DIM = 4


def components() -> dict:
    return tiny_components(DIM, decoder_loss=True)


def test_contract():
    model = check_model(WAE, latent_dim=DIM, components=components(), batch=4, mmd_weight=10.0)
    assert model.objective == "wae-mmd" and model.regularizer == "mmd" and model.kernel_c == 2 * DIM


def brute_force_mmd(z: torch.Tensor, p: torch.Tensor, c: float) -> float:
    """Algorithm 2's estimator written out as double loops over pairs, in float64."""

    def k(a, b):
        return c / (c + float(((a - b) ** 2).sum()))

    n, m = len(z), len(p)
    zz = sum(k(z[i], z[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    pp = sum(k(p[i], p[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    zp = sum(k(z[i], p[j]) for i in range(n) for j in range(m)) / (n * m)
    return zz + pp - 2 * zp


@pytest.mark.parametrize("n, m", [(7, 7), (5, 9)])
def test_mmd_matches_a_brute_force_double_loop(n, m):
    gen = torch.Generator().manual_seed(0)
    z, p = (
        torch.randn(n, 3, generator=gen, dtype=torch.float64) * 1.5 + 0.3,
        torch.randn(m, 3, generator=gen, dtype=torch.float64),
    )
    assert mmd_imq(z, p, 6.0).item() == pytest.approx(brute_force_mmd(z, p, 6.0), rel=1e-10, abs=1e-12)
    assert mmd_imq(z[:1], p, 6.0).item() == 0.0  # one code: no pair, no estimate


def test_mmd_is_unbiased_zero_for_prior_samples_and_positive_for_a_shift():
    gen = torch.Generator().manual_seed(1)
    d, n, repeats = 8, 128, 40
    c = 2.0 * d
    same = torch.tensor(
        [mmd_imq(torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen), c).item() for _ in range(repeats)]
    )
    shifted = torch.tensor(
        [
            mmd_imq(torch.randn(n, d, generator=gen) + 0.5, torch.randn(n, d, generator=gen), c).item()
            for _ in range(repeats)
        ]
    )
    error = same.std().item() / math.sqrt(repeats)
    assert (
        abs(same.mean().item()) < 4 * error
    )  # unbiased: prior vs prior averages to 0 (a biased V-statistic would sit above 0)
    assert (same < 0).any()  # ... so single estimates fall below 0 too
    assert shifted.min().item() > 10 * same.std().item() and shifted.mean().item() > 50 * error


def test_loss_is_the_cost_plus_lambda_times_the_mmd_of_the_batch():
    torch.manual_seed(0)
    model = WAE(**components(), in_shape=(3, 32, 32), latent_dim=DIM, mmd_weight=7.0).eval()
    x = torch.rand(6, 3, 32, 32)
    torch.manual_seed(5)
    with torch.no_grad():
        parts = model(x)
        z = model.encoder(x)[0]
        torch.manual_seed(5)
        prior = model.prior.sample(6)
        recon = model.loss.nll(x, model.decoder(z))
    mmd = mmd_imq(z, prior, 2.0 * DIM)
    assert torch.allclose(parts.recon, recon)
    assert torch.allclose(parts.terms["mmd"], mmd.expand(6)) and torch.allclose(parts.kl, 7.0 * mmd.expand(6))
    assert torch.allclose(parts.loss, recon + 7.0 * mmd)  # batch mean: mean cost + lambda * MMD
    assert parts.loss.mean().item() == pytest.approx(recon.mean().item() + 7.0 * mmd.item(), rel=1e-6)


def test_the_penalty_pulls_the_codes_toward_the_prior():
    """One gradient step on lambda * MMD alone moves codes that sit away from N(0, I) toward it."""
    gen = torch.Generator().manual_seed(2)
    z = (torch.randn(64, DIM, generator=gen) + 2.0).requires_grad_()
    prior = torch.randn(64, DIM, generator=gen)
    mmd_imq(z, prior, 2.0 * DIM).backward()
    assert (z.grad.mean(0) > 0).all()  # descending moves the codes' mean down, toward 0


GATHER_RUNNER = """
import os, torch, torch.distributed as dist
from vaezoo_defaults.wae.mmd import gather_rows, mmd_imq
rank = int(os.environ["RANK"])
gen = torch.Generator().manual_seed(0)
weight = torch.randn(3, 4, generator=gen)
x, prior = torch.randn(37, 3, generator=gen) + 1.0, torch.randn(37, 4, generator=gen)
def grad(rows_x, rows_prior, gather):
    w = weight.clone().requires_grad_()
    z = rows_x @ w
    codes, samples = (gather_rows(z), gather_rows(rows_prior)) if gather else (z, rows_prior)
    mmd = mmd_imq(codes, samples, 8.0)
    mmd.backward()
    return mmd.detach(), w.grad
whole_mmd, whole = grad(x, prior, False)  # one process with all 37 rows
half_x, half_p = x.tensor_split(2)[rank], prior.tensor_split(2)[rank]  # 19 and 18 rows
own_mmd, own = grad(half_x, half_p, False)
dist.init_process_group("gloo")
mmd, g = grad(half_x, half_p, True)
g = g.clone(); dist.all_reduce(g); g /= 2  # vaezoo's gradient averaging over the ranks
print(
    f"rank {rank} value_same={torch.allclose(mmd, whole_mmd, atol=1e-6)} "
    f"grad_same={torch.allclose(g, whole, atol=1e-6)} "
    f"own_half_differs={not torch.allclose(own_mmd, whole_mmd, atol=1e-3)}"
)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_gathered_mmd_and_its_gradient_are_those_of_the_whole_batch(tmp_path):
    """Two ranks with 19 and 18 of 37 codes: the gathered MMD and the rank-averaged gradient equal one
    process's with all 37 (a rank's own half alone gives another estimate)."""
    stdout = on_two_ranks(tmp_path, GATHER_RUNNER)
    for rank in (0, 1):
        assert f"rank {rank} value_same=True grad_same=True own_half_differs=True" in stdout, stdout


# ---- real CIFAR-10, tiny widths ----

FAMILY = Family("cifar-wae", [*TINY_SETS, "train.test_limit=32"])


straight = FAMILY.straight_fixture()


def test_run_sample_eval_on_cifar(cifar: Path, straight: Path, tmp_path: Path) -> None:
    last = metrics(straight)[-1]
    assert {"test_mmd", "test_recon", "test_loss"} <= set(last)
    assert "test_kl" not in last and "test_bits_per_dim" not in last
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_mmd"])
    report = json.loads(FAMILY.sample_and_eval(straight, cifar, tmp_path))
    assert report["objective"] == "wae-mmd" and report["regularizer"] == "mmd" and math.isfinite(report["loss"])


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    FAMILY.assert_resume_is_bit_exact(cifar, straight, tmp_path)


# The prior samples come from each rank's own generator, so a 2-process run cannot draw the numbers one
# process draws. This patch makes the N(0, I) samples of every step one fixed draw of the global batch,
# each rank taking its shard: gathered, they are exactly the single process's samples.
PATCH = """
import os, torch
from vaezoo_defaults.normal.prior import NormalPrior
calls = [0]
def sample(self, n):
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    calls[0] += 1
    draw = torch.randn(n * world, self.latent_dim, generator=torch.Generator().manual_seed(calls[0]))
    return draw.tensor_split(world)[rank]
NormalPrior.sample = sample
"""
MATCH_SETS = ["encoder.hidden=[8,16]", "decoder.hidden=[16,8]", "latent_dim=8"]
MATCH = [
    *("--epochs", "1", "--batch-size", "64", "--precision", "fp32", "--limit", "256", "--device", "cpu"),
    *("--seed", "3", "--set", 'train.optimizer="sgd"', "--lr", "1e-5"),
    *set_args([*MATCH_SETS, "train.test_limit=100", "train.sample_count=4"]),
]


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_whole_batch_and_write_one_set_of_files(cifar, tmp_path):
    """`--nproc 2` writes one set of files; and 2 ranks x 32 images per step end within 1e-4 of one
    process with 64 (plain SGD, as in test_distributed): the MMD is the global batch's because the codes
    are gathered over ranks."""
    ranks_match_one_process(FAMILY, cifar, tmp_path, MATCH, PATCH, MATCH_SETS, seed=3)
    train = [metrics(tmp_path / d)[0]["train_loss"] for d in ("one", "two")]
    assert train[0] == pytest.approx(train[1], rel=1e-5)
