"""The `vqvae` family: the model contract, a short run on real CIFAR-10, and the numbers the architecture
defines (uniform-prior KL, straight-through gradients, EMA codebook updates, dead-code restarts, codes
that are codebook rows and the nearest ones under autocast too, a causal PixelCNN prior); its training
step fits in a CUDA graph (no host reads, no Python state, no step dependence: vaezoo.testing's
`graph_unsafe_reads`)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import vaezoo
from vaezoo.testing import check_model, graph_unsafe_reads
from vaezoo_defaults.dlogistic.loss import DiscretizedLogisticKL
from vaezoo_defaults.vqvae.model import VQVAE
from vaezoo_defaults.vqvae.prior import PixelCNNCodePrior

SMALL = {"latent_dim": 8, "codebook_size": 32, "hidden": 16, "res_blocks": 1, "prior_channels": 8, "prior_layers": 2}


def small_model(**kw) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(loss=DiscretizedLogisticKL(n_mix=2), in_shape=(3, 32, 32), **{**SMALL, **kw})


def images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255


def flat_encoder_outputs(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encoder(2 * x - 1).permute(0, 2, 3, 1).reshape(-1, model.latent_dim)


@pytest.mark.parametrize("code_prior", ["pixelcnn", "uniform"])
def test_contract(code_prior):
    model = check_model(VQVAE, components={"loss": DiscretizedLogisticKL(n_mix=2)}, code_prior=code_prior, **SMALL)
    assert model.discrete and model.grid == (8, 8)


def test_uniform_prior_kl_is_positions_times_log_k():
    model = small_model(code_prior="uniform").eval()
    x = images()
    with torch.no_grad():
        parts = model(x)
        _, _, z_q = model.quantize(x)
        recon = model.loss.nll(x, model.decoder(z_q))
    assert torch.allclose(parts.kl, torch.full((4,), 64 * math.log(32)))
    assert torch.allclose(parts.recon, recon) and torch.allclose(parts.loss, parts.recon + parts.kl)


def test_relative_commitment_is_the_commitment_over_the_encoder_outputs_size():
    """`commitment` grows with the scale of the encoder outputs (and of the codes, which follow them);
    `relative_commitment` does not: both scaled by 3, the first is 9 times larger, the second the same."""
    model = small_model().eval()
    x = images()
    with torch.no_grad():
        before = model(x).terms
        size = model.encoder(2 * x - 1).pow(2).flatten(1).sum(1)
        last = model.encoder[-1]
        last.weight.mul_(3), last.bias.mul_(3), model.codebook.embedding.mul_(3)
        after = model(x).terms
    assert torch.allclose(before["relative_commitment"], before["commitment"] / size)
    assert torch.allclose(after["commitment"], 9 * before["commitment"], rtol=1e-4)
    assert torch.allclose(after["relative_commitment"], before["relative_commitment"], rtol=1e-4)


def test_quantised_vectors_are_the_nearest_codebook_rows():
    model = small_model().eval()
    x = images()
    vectors = model.encode(x).permute(0, 2, 3, 1).reshape(-1, 8)
    nearest = torch.cdist(flat_encoder_outputs(model, x), model.codebook.embedding).argmin(1)
    assert torch.equal(vectors, model.codebook.embedding[nearest])


def test_straight_through_gradient_reaches_the_encoder_and_the_prior_keeps_to_itself():
    model = small_model().train()
    x = images()
    model(x, step=0).recon.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters() if p.dim() > 1)
    model.zero_grad(set_to_none=True)
    model(x, step=1).kl.sum().backward()  # the prior's NLL trains the prior only
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())


def test_ema_update_moves_used_codes_toward_their_encoder_outputs():
    model = small_model(restart_after=1000, ema_decay=0.9).train()
    book = model.codebook
    x = images(8)
    z = flat_encoder_outputs(model, x)
    book.embedding.copy_(z[torch.randperm(len(z), generator=torch.Generator().manual_seed(2))[:32]] + 0.01)
    book.embed_sum.copy_(book.embedding)
    book.unused.zero_()
    before = book.embedding.clone()
    with torch.no_grad():
        index = torch.cdist(z, before).argmin(1)
        onehot = torch.nn.functional.one_hot(index, 32).float()
        counts = onehot.sum(0)
        cluster = 0.9 * torch.ones(32) + 0.1 * counts
        smoothed = (cluster + 1e-5) / (cluster.sum() + 32 * 1e-5) * cluster.sum()
        expected = (0.9 * before + 0.1 * onehot.t() @ z) / smoothed.unsqueeze(1)
        means = (onehot.t() @ z) / counts.clamp(min=1).unsqueeze(1)
        model(x, step=0)
    used = counts > 0
    assert used.sum() > 1
    assert torch.allclose(book.embedding, expected, atol=1e-5)
    assert torch.allclose(book.cluster_size, cluster)
    assert ((book.embedding - means).norm(dim=1)[used] < (before - means).norm(dim=1)[used]).all()


def test_dead_code_restarts_at_an_encoder_output_and_evaluation_changes_nothing():
    model = small_model(restart_after=3).train()
    book = model.codebook
    x = images(8)
    z = flat_encoder_outputs(model, x)
    book.embedding.copy_(z[:32])
    book.embedding[5] = 1e3  # never the nearest code
    book.embed_sum.copy_(book.embedding)
    book.unused.zero_()
    book.unused[5] = 2
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    model(x, step=None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    model.train()
    model(x, step=0)
    assert book.unused[5] == 0 and book.cluster_size[5] == 1
    assert (book.embedding[5:6] - z).abs().amax(
        dim=1
    ).min() < 1e-6  # a row of this batch's encoder outputs (exact up to float copies)
    assert (book.embedding[5] != 1e3).all()


def test_pixelcnn_prior_sees_exactly_the_codes_before_each_position():
    torch.manual_seed(0)
    prior = PixelCNNCodePrior(codes=16, grid=(3, 4), channels=8, layers=3).eval()
    codes = torch.randint(0, 16, (1, 3, 4))
    positions = 12
    changed = codes.repeat(positions, 1, 1)
    changed.view(positions, -1)[torch.arange(positions), torch.arange(positions)] += 1
    changed %= 16  # row q: the code at raster position q is different
    with torch.no_grad():
        base, moved = prior(codes).flatten(2), prior(changed).flatten(2)
    depends = (moved - base).abs().amax(1) > 1e-6  # [q, p]: the logits at p moved when q changed
    assert torch.equal(depends, torch.ones(positions, positions, dtype=torch.bool).triu(1))
    assert torch.allclose(prior.log_prob(codes), torch.log_softmax(base, 1).gather(1, codes.view(1, 1, -1)).sum())


def test_fit_on_cifar(cifar, tmp_path):
    sets = [
        "latent_dim=8",
        "model.hidden=16",
        "model.codebook_size=32",
        "model.prior_channels=8",
        "model.prior_layers=2",
        "loss.n_mix=2",
    ]
    options = {
        "train.epochs": 1,
        "train.limit": 256,
        "train.test_limit": 100,
        "train.batch_size": 32,
        "train.sample_count": 8,
    }
    result = vaezoo.fit("cifar-vqvae", sets=sets, options=options, data_dir=cifar, device="cpu", out=tmp_path)
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["step"] == 8
    for key in ("train_loss", "test_loss", "test_recon", "test_kl", "test_bits_per_dim"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test_loss"] == pytest.approx(metrics["test_recon"] + metrics["test_kl"])
    terms = metrics["test_terms"]
    assert 1.0 <= terms["perplexity"] <= terms["codes_used"] <= 32 and math.isfinite(terms["commitment"])
    assert 0 < terms["relative_commitment"] < 1
    loaded = vaezoo.load(tmp_path / "model.safetensors", device="cpu")  # the codebook buffers travel with the weights
    assert torch.equal(loaded.codebook.embedding, result.model.codebook.embedding.cpu())
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "interpolations.png").is_file()


class _Syncs(torch.nn.Module):
    """A toy family whose training forward does one host read of the kind `how` names."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.layer, self.calls = how, torch.nn.Linear(4, 4), 0

    def forward(self, x, y=None, step=None):
        out = self.layer(x)
        if self.how == "item":
            out = out * out.mean().item()
        elif self.how == "if":
            out = out * 2 if out.sum() > 0 else out
        elif self.how == "mask":
            out = out[out > 0].sum() + out
        elif self.how == "nonzero":
            out = out + torch.nonzero(out).shape[0]
        elif self.how == "counter":
            self.calls += 1
        elif self.how == "random":
            out = out * random.random()
        elif self.how == "numpy":
            out = out * float(np.random.rand())
        return vaezoo.LossParts(out.sum(1), out.sum(1), out.sum(1))


@pytest.mark.parametrize("how", ["item", "if", "mask", "nonzero", "counter", "random", "numpy"])
def test_the_graph_check_catches_each_kind_of_host_read(how):
    np.random.rand()  # NumPy's generator mid-block: a draw moves its position, not its key
    assert graph_unsafe_reads(_Syncs(how), torch.randn(3, 4))
    assert graph_unsafe_reads(_Syncs("none"), torch.randn(3, 4)) == []


@pytest.mark.parametrize("code_prior", ["pixelcnn", "uniform"])
def test_training_step_fits_in_a_cuda_graph(code_prior):
    """No host read in the training forward and backward (codebook update, dead-code restarts, prior and
    likelihood included), no Python state, and no dependence on the step number: the family declares it."""
    model = small_model(code_prior=code_prior).train()
    assert model.cuda_graph
    x = images(8)
    assert graph_unsafe_reads(model, x, step=0) == []  # the first step restarts every unused code
    model.codebook.unused[:4] = model.codebook.restart_after - 1  # and this one some of them
    assert graph_unsafe_reads(model, x, step=1) == []
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run(step):
        model.load_state_dict(state)
        torch.manual_seed(3)
        loss = model(x, step=step).loss
        return loss, {k: v.clone() for k, v in model.state_dict().items()}

    (early, early_state), (late, late_state) = run(2), run(10**6)
    assert torch.equal(early, late) and all(torch.equal(early_state[k], late_state[k]) for k in state)


def test_nearest_codes_are_exact_under_bf16_autocast():
    """Codes close together far from the origin: in bf16 their distances round alike, so a search through
    bf16 picks codes that are not the nearest; the codebook searches in float32 whatever the autocast."""
    torch.manual_seed(0)
    book = small_model().codebook
    book.embedding.copy_(10 + 0.05 * torch.randn(32, 8))
    flat = 10 + 0.05 * torch.randn(512, 8)
    distances = torch.cdist(flat.double(), book.embedding.double()).pow(2)

    def excess(index):  # how much farther the chosen codes are than the nearest ones (squared distance)
        return (distances.gather(1, index.unsqueeze(1)).squeeze(1) - distances.min(1).values).max().item()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = book.nearest(flat)
        through_bf16 = (-2 * flat @ book.embedding.t() + book.embedding.pow(2).sum(1)).argmin(1)
    assert excess(through_bf16) > 1e-2  # what the check would catch
    assert excess(found) < 1e-4 and excess(book.nearest(flat)) < 1e-4
