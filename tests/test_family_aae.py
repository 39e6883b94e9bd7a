"""The `aae` family (Makhzani et al. 2015): deterministic codes, the regularizer is the encoder's
generator loss (log 2 against an undecided discriminator), each phase trained on its own loss
(gradients against ones derived by hand), the model contract, and runs on real CIFAR-10 (train,
sample, eval, bit-exact resume, --nproc 2, and two ranks matching one process on the whole batch)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from familyrun import Family, grads, metrics, ranks_match_one_process, record_updates, set_args, tiny_components
from tinydata import TINY_SETS

from vaezoo import Prior
from vaezoo.testing import check_model
from vaezoo_defaults.aae.model import AdversarialAE

LATENT = 4


def small_model(**keys) -> AdversarialAE:
    torch.manual_seed(0)
    return AdversarialAE(
        in_shape=(3, 32, 32), latent_dim=LATENT, **{"disc_hidden": [8, 8], **keys}, **tiny_components(LATENT)
    )


def images(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255


def test_contract():
    model = check_model(AdversarialAE, latent_dim=LATENT, components=tiny_components(LATENT), disc_hidden=[8])
    assert model.objective == "aae" and model.regularizer == "adversarial"
    assert not any(
        n.startswith("encoder.logvar")
        for group in model.parameter_groups().values()
        for n, p in model.named_parameters()
        if any(p is q for q in group.params)
    )


def test_codes_are_deterministic_and_the_parts_are_recomputed_by_hand():
    model = small_model().eval()
    x = images()
    with torch.no_grad():
        first, second = model(x), model(x)
        z = model.encoder(x)[0]
        x_rec = torch.sigmoid(model.decoder(z))
        bce = -(x * torch.log(x_rec) + (1 - x) * torch.log(1 - x_rec)).flatten(1).sum(1)
        generator = -torch.log(torch.sigmoid(model.discriminator(z)))
    assert torch.equal(first.loss, second.loss) and torch.equal(first.kl, second.kl)  # q(z|x) is a point mass
    assert torch.allclose(first.recon, bce, rtol=1e-4) and torch.allclose(first.kl, generator, rtol=1e-5)
    assert torch.equal(first.loss, first.recon + first.kl)
    assert torch.equal(model.encode(x), z) and torch.allclose(model.reconstruct(x), x_rec)


def test_an_undecided_discriminator_gives_log_2_per_code():
    """D(z) = 1/2 everywhere (last layer zeroed): the generator loss is log 2 and D's loss 2 log 2."""
    model = small_model().eval()
    last = model.discriminator.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        parts = model(images())
    assert torch.allclose(parts.kl, torch.full((5,), math.log(2)))
    assert torch.allclose(parts.terms["discriminator"], torch.full((5,), 2 * math.log(2)))


def test_each_phase_learns_its_own_loss():
    """One training step, recorded and not applied: the discriminator's gradient is that of
    -log D(z') - log(1 - D(Enc(x))) (codes held fixed), the autoencoder's that of the BCE plus
    adversarial_weight * -log D(Enc(x)); written here from the paper's definitions."""
    weight = 2.5
    model = small_model(adversarial_weight=weight).train()
    x = images()
    groups, seen = record_updates(model, x, seed=3)
    assert list(seen) == ["discriminator", "autoencoder"]

    torch.manual_seed(3)
    z_prior = torch.randn(len(x), LATENT)
    z = model.encoder(x)[0]
    x_rec = torch.sigmoid(model.decoder(z))

    def prob(codes):
        return torch.sigmoid(model.discriminator(codes))

    d_loss = -torch.log(prob(z_prior)) - torch.log(1 - prob(z.detach()))
    bce = -(x * torch.log(x_rec) + (1 - x) * torch.log(1 - x_rec)).flatten(1).sum(1)
    expected = {
        "discriminator": grads(d_loss.mean(), groups["discriminator"]),
        "autoencoder": grads((bce - weight * torch.log(prob(z))).mean(), groups["autoencoder"]),
    }
    for name, wanted in expected.items():
        for got, want in zip(seen[name], wanted):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-5), name
    # the generator loss reaches the encoder: without it the encoder's gradient would differ
    without = grads(bce.mean(), groups["autoencoder"])
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(seen["autoencoder"], without))


class LearnedPrior(Prior):
    def __init__(self, *, latent_dim: int) -> None:
        super().__init__(latent_dim=latent_dim)
        self.shift = torch.nn.Parameter(torch.zeros(latent_dim))


def test_rejects_bad_keys_and_a_learned_prior():
    with pytest.raises(ValueError, match="adversarial_weight"):
        small_model(adversarial_weight=-1.0)
    with pytest.raises(ValueError, match="widths from 1"):
        small_model(disc_hidden=[8, 0])
    with pytest.raises(ValueError, match="fixed prior"):
        AdversarialAE(
            in_shape=(3, 32, 32),
            latent_dim=LATENT,
            **{**tiny_components(LATENT), "prior": LearnedPrior(latent_dim=LATENT)},
        )


# End to end on real CIFAR-10 (tiny widths).
FAMILY = Family("cifar-aae", [*TINY_SETS, "model.disc_hidden=[8]", "train.test_limit=32"])


straight = FAMILY.straight_fixture()


def test_run_sample_and_eval(cifar: Path, straight: Path, tmp_path: Path) -> None:
    last = metrics(straight)[-1]
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_adversarial"])
    assert "test_kl" not in last and "test_bits_per_dim" not in last and set(last["test_terms"]) == {"discriminator"}
    text = FAMILY.sample_and_eval(straight, cifar, tmp_path)
    assert "adversarial" in text and "discriminator" in text


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    FAMILY.assert_resume_is_bit_exact(cifar, straight, tmp_path, "test_terms")


# Each rank draws its own prior samples, so two ranks cannot draw one process's numbers; to compare the
# arithmetic, every Gaussian draw is zero in every process of the comparison.
PATCH = """
import torch
torch.randn = lambda *size, **kw: torch.zeros(*size, **{k: v for k, v in kw.items() if k != "generator"})
torch.randn_like = lambda t, **kw: torch.zeros_like(t, **kw)
"""
DDP_SETS = [
    "encoder.hidden=[8,16]",
    "decoder.hidden=[16,8]",
    "latent_dim=8",
    "model.disc_hidden=[16]",
    "train.test_limit=100",
    "train.sample_count=4",
]
DDP = [
    *("--epochs", "1", "--batch-size", "64", "--limit", "250", "--device", "cpu", "--seed", "3"),
    *("--set", 'train.optimizer="sgd"', "--lr", "1e-5", *set_args(DDP_SETS)),
]


@pytest.mark.slow
def test_two_ranks_match_one_process_and_write_one_set_of_files(cifar: Path, tmp_path: Path) -> None:
    """`--nproc 2` runs and writes one set of files; and two ranks with 32 images each per step end
    within 1e-4 of one process with 64 (plain SGD, as tests/test_distributed.py): the family's two
    updates average their gradients over ranks."""
    one, _, initial, diff = ranks_match_one_process(FAMILY, cifar, tmp_path, DDP, PATCH, DDP_SETS, seed=3)
    for player in ("encoder.", "decoder.", "discriminator."):  # training moved each player far more than that
        assert max((one[k] - initial[k]).abs().max().item() for k in one if k.startswith(player)) > 100 * diff, player
