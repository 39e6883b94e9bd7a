"""The hierarchical VAE family `hvae`: the Model contract, a short training run of `cifar-hvae` on real
CIFAR-10 (per-level KL terms, bits/dim, importance-weighted NLL against the ELBO), the top-down prior
structure, the training-only KL warm-up and free bits, and a training step that fits in a CUDA graph
(no host reads; declared only without the warm-up, the family's own step-dependent schedule)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

import vaezoo
from vaezoo.api import load_split_images
from vaezoo.testing import check_model, graph_unsafe_reads
from vaezoo_defaults.dlogistic.loss import DiscretizedLogisticKL
from vaezoo_defaults.hvae.model import HierarchicalVAE

TINY = {"width": 16, "blocks": 1}
LEVELS = ["kl_4x4", "kl_8x8", "kl_16x16"]


def tiny_model(**kw) -> HierarchicalVAE:
    torch.manual_seed(0)
    return HierarchicalVAE(loss=DiscretizedLogisticKL(n_mix=2), in_shape=(3, 32, 32), latent_dim=4, **{**TINY, **kw})


def test_hvae_meets_the_model_contract():
    model = check_model(HierarchicalVAE, latent_dim=4, components={"loss": DiscretizedLogisticKL(n_mix=2)}, **TINY)
    assert model.discrete
    x = torch.rand(2, 3, 32, 32)
    parts = model(x)
    assert sorted(parts.terms) == sorted(LEVELS)
    assert torch.allclose(sum(parts.terms.values()), parts.kl, rtol=1e-5)


def test_cifar_hvae_trains_and_its_bounds_hold(cifar, tmp_path):
    sets = [f"model.{key}={value}" for key, value in TINY.items()] + ["loss.n_mix=2", "latent_dim=4"]
    options = {
        "train.epochs": 2,
        "train.limit": 320,
        "train.test_limit": 64,
        "train.batch_size": 32,
        "train.sample_count": 4,
    }
    result = vaezoo.fit("cifar-hvae", sets=sets, options=options, data_dir=cifar, device="cpu", out=tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("train_loss", "test_loss", "test_recon", "test_kl", "test_bits_per_dim"):
            assert math.isfinite(m[key]), (key, m)
        assert sorted(m["test_terms"]) == sorted(LEVELS)
        assert all(v > 0 for v in m["test_terms"].values())
        assert sum(m["test_terms"].values()) == pytest.approx(m["test_kl"], rel=1e-6)
        assert m["test_loss"] == pytest.approx(m["test_recon"] + m["test_kl"], rel=1e-6)
        assert m["test_bits_per_dim"] == pytest.approx(m["test_loss"] / (3072 * math.log(2)), rel=1e-9)
        assert 0 <= m["skipped_updates"] <= 20  # the recipe turns skipping on; these updates are not wild
    assert lines[1]["test_loss"] < lines[0]["test_loss"]  # it learns

    model = result.model.eval()
    images, _ = load_split_images(model, "test", data_dir=cifar, limit=8)
    x = images.float() / 255
    torch.manual_seed(1)
    with torch.no_grad():
        elbo = torch.stack([model(x).loss for _ in range(8)]).mean(0)  # negative ELBO, averaged over draws
        iw_nll = -model.log_likelihood(x, k=100)  # 100 samples of 8 images: two chunks of MAX_ROWS
    assert torch.isfinite(iw_nll).all()
    assert iw_nll.mean() <= elbo.mean() + 1.0
    assert (iw_nll - elbo).abs().max() < 0.05 * elbo.mean()  # the same quantity, not some other number


def test_each_prior_depends_on_the_levels_above():
    model = tiny_model().eval()
    torch.manual_seed(0)
    z1 = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        _, a = model.top_down(1, zs=[z1], use_mean=True)
        _, b = model.top_down(1, zs=[z1 + 1.0], use_mean=True)
        _, c = model.top_down(1, zs=[z1, a[1].z + 1.0], use_mean=True)
    assert torch.equal(a[0].p_mean, b[0].p_mean) and torch.equal(
        a[0].p_std, b[0].p_std
    )  # the top prior is learned, unconditional
    assert not torch.allclose(a[1].p_mean, b[1].p_mean) and not torch.allclose(a[1].p_std, b[1].p_std)  # p(z_2 | z_1)
    assert not torch.allclose(a[2].p_mean, b[2].p_mean)  # p(z_3 | z_1, z_2) through z_2's prior and z_1
    assert torch.equal(a[1].p_mean, c[1].p_mean) and not torch.allclose(a[2].p_mean, c[2].p_mean)  # p(z_3 | z_2)
    assert [lv.z.shape[-1] for lv in a] == [4, 8, 16]
    # the posterior of a level sees the image; sampling at temperature 0 is the prior means' image
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        _, post = model.top_down(2, model.bottom_up(x))
        assert not torch.allclose(post[0].q_mean[0], post[0].q_mean[1])
        assert torch.equal(model.sample(2, temperature=0.0), model.sample(2, temperature=0.0))


def test_warmup_and_free_bits_act_only_in_training():
    model = tiny_model(kl_warmup_steps=10, free_bits=2.0).eval()
    x = torch.rand(3, 3, 32, 32)

    def parts(step):
        torch.manual_seed(5)
        with torch.no_grad():
            return model(x, step=step)

    evaluation, first, late = parts(None), parts(0), parts(1000)
    assert torch.equal(evaluation.kl, first.kl) and torch.equal(evaluation.recon, first.recon)  # same draws
    assert torch.allclose(evaluation.loss, evaluation.recon + evaluation.kl)
    floored = sum(kl.clamp(min=2.0 * 4) for kl in evaluation.terms.values())
    assert torch.allclose(first.loss, first.recon + 0.1 * floored)  # warm-up weight (0 + 1) / 10
    assert torch.allclose(late.loss, late.recon + floored)
    assert (floored > evaluation.kl).any()  # the free bits lifted some level of this untrained model
    plain = tiny_model()
    torch.manual_seed(5)
    trained = plain(x, step=3).loss
    torch.manual_seed(5)
    assert torch.allclose(trained, plain(x, step=None).loss)  # neither configured: training loss is the ELBO


@pytest.mark.parametrize("keys", [{}, {"kl_warmup_steps": 10, "free_bits": 2.0}])
def test_training_forward_has_no_host_reads(keys):
    """Forward and backward of a training step (posterior noise, per-level KLs, free bits, warm-up weight,
    the discretized logistic likelihood): no host read, no Python state changed, no Python random."""
    model = tiny_model(**keys).train()
    x = torch.rand(4, 3, 32, 32)
    assert graph_unsafe_reads(model, x, step=0) == [] and graph_unsafe_reads(model, x, step=5) == []


def test_cuda_graph_waits_for_the_families_own_warm_up():
    """hvae's KL warm-up is its own `kl_weight(step)`: its training loss changes until the warm-up ends and
    is the same afterwards, and vaezoo's graph step (kl_settled) captures only from then on."""
    from vaezoo.trainer.graph_step import kl_settled

    x = torch.rand(3, 3, 32, 32)

    def loss(model, step):
        torch.manual_seed(5)
        with torch.no_grad():
            return model(x, step=step).loss

    warming = tiny_model(kl_warmup_steps=10)
    assert HierarchicalVAE.cuda_graph and warming.cuda_graph
    assert not torch.equal(loss(warming, 0), loss(warming, 9)) and torch.equal(loss(warming, 9), loss(warming, 10**6))
    state = SimpleNamespace(step=0)
    run = SimpleNamespace(model=warming, settings=SimpleNamespace(epochs=3), batches_per_epoch=20, state=state)
    settled = kl_settled(run)
    for step in range(12):
        state.step = step
        assert settled() == (step >= 9), step  # weight min(1, (step + 1) / 10) reaches 1 at step 9
