"""The `vae-gan` family (Larsen et al. 2016): the feature-space Gaussian likelihood (eq. 6) against
torch.distributions, the evaluation's parts recomputed by hand, each of Algorithm 1's three players
trained on its own loss only (gradients against ones derived by hand from eqs. 3, 7 and 8), the model
contract, and runs on real CIFAR-10 (train, sample, eval with the GAN terms, bit-exact resume,
--nproc 2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from familyrun import Family, grads, metrics, record_updates, tiny_components
from tinydata import TINY_SETS

from vaezoo.api import build
from vaezoo.testing import check_model, component
from vaezoo_defaults.vaegan.model import VAEGAN, feature_nll, gate_decision

LATENT = 4
DISC = [4, 8]


def small_model(loss: str = "bce-kl", loss_keys: dict | None = None, **keys) -> VAEGAN:
    torch.manual_seed(0)
    components = {**tiny_components(LATENT), "loss": component("loss", loss, **(loss_keys or {}))}
    return VAEGAN(in_shape=(3, 32, 32), latent_dim=LATENT, **{"disc_hidden": DISC, **keys}, **components)


def images(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255


@pytest.mark.parametrize("gan_loss", ["non-saturating", "minimax"])
def test_contract(gan_loss):
    model = check_model(
        VAEGAN, latent_dim=LATENT, components=tiny_components(LATENT), disc_hidden=DISC, gan_loss=gan_loss
    )
    assert model.objective == "vae-gan" and model.regularizer == "kl"


def test_feature_likelihood_is_a_unit_gaussian_in_feature_space():
    real, fake = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    expected = -torch.distributions.Normal(fake, 1.0).log_prob(real).flatten(1).sum(1)
    assert torch.allclose(feature_nll(real, fake), expected, atol=1e-5)


def test_evaluation_parts_recomputed_by_hand():
    """recon is the pixel BCE of Dec(z) for one posterior sample, kl the closed-form KL to N(0, I),
    loss their sum; the terms are L_llike and the two GAN losses of that same sample."""
    model = small_model().eval()
    x = images()
    torch.manual_seed(7)
    with torch.no_grad():
        parts = model(x)
        torch.manual_seed(7)
        mu, logvar = model.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        z_prior = torch.randn(len(x), LATENT)
        x_rec = torch.sigmoid(model.decoder(z))
        bce = -(x * torch.log(x_rec) + (1 - x) * torch.log(1 - x_rec)).flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        dis = model.discriminator
        p_real, p_rec, p_prior = (
            torch.sigmoid(dis.head(dis.features(v))).squeeze(1)
            for v in (x, x_rec, torch.sigmoid(model.decoder(z_prior)))
        )
        d = dis.features(x).shape[1]
        llike = 0.5 * (dis.features(x) - dis.features(x_rec)).pow(2).sum(1) + 0.5 * d * math.log(2 * math.pi)
    assert torch.allclose(parts.recon, bce, rtol=1e-4) and torch.allclose(parts.kl, kl, rtol=1e-5, atol=1e-6)
    assert torch.equal(parts.loss, parts.recon + parts.kl)
    assert torch.allclose(parts.terms["feature_recon"], llike, rtol=1e-5)
    assert torch.allclose(
        parts.terms["gan_discriminator"], -torch.log(p_real) - torch.log(1 - p_rec) - torch.log(1 - p_prior), rtol=1e-4
    )
    assert torch.allclose(parts.terms["gan_generator"], -torch.log(p_rec) - torch.log(p_prior), rtol=1e-4)


@pytest.mark.parametrize(
    ("gan_loss", "loss", "kl_weight"),
    [("non-saturating", "bce-kl", 1.0), ("minimax", "bce-kl", 1.0), ("non-saturating", "beta-kl", 0.5)],
)
def test_each_player_learns_its_own_loss_of_algorithm_1(gan_loss, loss, kl_weight):
    """One training step, its updates recorded and not applied: the discriminator's gradient is that
    of -L_GAN (no L_llike), the encoder's that of L_prior + L_llike (L_prior weighted by the loss's
    kl_weight: beta-kl with beta 0.5), the decoder's that of gamma * L_llike minus its part of L_GAN;
    written here from the paper's equations."""
    gamma = 0.3
    loss_keys = {"beta": kl_weight} if loss == "beta-kl" else {}
    model = small_model(loss, loss_keys, gamma=gamma, gan_loss=gan_loss).train()
    x = images()
    groups, seen = record_updates(model, x, seed=3)
    assert list(seen) == ["discriminator", "encoder", "decoder"]

    torch.manual_seed(3)
    dis = model.discriminator
    mu, logvar = model.encoder(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    z_prior = torch.randn(len(x), LATENT)
    x_rec, x_prior = torch.sigmoid(model.decoder(z)), torch.sigmoid(model.decoder(z_prior))

    def prob(v):
        return torch.sigmoid(dis.head(dis.features(v))).squeeze(1)

    l_gan = torch.log(prob(x)) + torch.log(1 - prob(x_rec.detach())) + torch.log(1 - prob(x_prior.detach()))  # eq. 8
    l_prior = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)  # eq. 3
    l_llike = 0.5 * (dis.features(x).detach() - dis.features(x_rec)).pow(2).sum(1)  # eq. 7 (constant dropped)
    if gan_loss == "minimax":
        generator = torch.log(1 - prob(x_rec)) + torch.log(1 - prob(x_prior))
    else:
        generator = -torch.log(prob(x_rec)) - torch.log(prob(x_prior))
    expected = {
        "discriminator": grads((-l_gan).mean(), groups["discriminator"]),
        "encoder": grads((kl_weight * l_prior + l_llike).mean(), groups["encoder"]),
        "decoder": grads((gamma * l_llike + generator).mean(), groups["decoder"]),
    }
    for name, wanted in expected.items():
        assert any(w.abs().sum() > 0 for w in wanted)
        for got, want in zip(seen[name], wanted):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-6), name


def test_pixel_weight_adds_the_pixel_likelihood_to_the_encoder_and_the_decoder():
    """pixel_weight w: the encoder learns L_prior + L_llike + w * recon, the decoder gamma * L_llike -
    L_GAN + w * recon (recon: the loss's pixel binary cross-entropy of x~); the discriminator is as
    without it."""
    w, gamma = 2.0, 0.3
    model = small_model(gamma=gamma, pixel_weight=w).train()
    x = images()
    groups, seen = record_updates(model, x, seed=3)

    torch.manual_seed(3)
    dis = model.discriminator
    mu, logvar = model.encoder(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    z_prior = torch.randn(len(x), LATENT)
    logits, x_prior = model.decoder(z), torch.sigmoid(model.decoder(z_prior))
    x_rec = torch.sigmoid(logits)

    def prob(v):
        return torch.sigmoid(dis.head(dis.features(v))).squeeze(1)

    recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    l_prior = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    l_llike = 0.5 * (dis.features(x).detach() - dis.features(x_rec)).pow(2).sum(1)
    generator = -torch.log(prob(x_rec)) - torch.log(prob(x_prior))
    expected = {
        "encoder": grads((l_prior + l_llike + w * recon).mean(), groups["encoder"]),
        "decoder": grads((gamma * l_llike + generator + w * recon).mean(), groups["decoder"]),
    }
    for name, wanted in expected.items():
        for got, want in zip(seen[name], wanted):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-5), name
    without = record_updates(small_model(gamma=gamma).train(), x, seed=3)[1]
    assert any(not torch.allclose(a, b) for a, b in zip(without["decoder"], seen["decoder"]))


def test_gate_decision():
    """Larsen et al.'s equilibrium gate at equilibrium 0.68, margin 0.35: a discriminator whose
    cross-entropy on reals or fakes is below 0.33 is winning (not updated), one above 1.03 losing (the
    decoder gets no GAN term); when both would be gated, both train."""
    for real, fake, expected in (
        (0.7, 0.6, (True, True)),
        (0.2, 0.7, (False, True)),
        (0.7, 0.1, (False, True)),
        (1.2, 0.7, (True, False)),
        (0.7, 2.0, (True, False)),
        (0.1, 2.0, (True, True)),
    ):
        assert gate_decision(real, fake, 0.68, 0.35) == expected, (real, fake)


def test_gate_skips_the_winning_discriminator_and_the_losing_discriminators_gan_term():
    """With the gate, a training step's updates follow the decision on the batch's cross-entropies
    (about log 2 for a fresh discriminator): equilibrium 10 makes the discriminator the winner (no
    discriminator update), equilibrium 0 the loser (with gamma 0 the decoder's loss is then zero)."""
    x = images()
    _, seen = record_updates(small_model(gate=True, equilibrium=10.0, margin=0.1), x, seed=3)
    assert list(seen) == ["encoder", "decoder"]
    for gate, wanted_zero in ((True, True), (False, False)):
        model = small_model(gate=gate, equilibrium=0.0, margin=0.1, gamma=0.0)
        _, seen = record_updates(model, x, seed=3)
        assert list(seen) == ["discriminator", "encoder", "decoder"]
        assert all(g.abs().sum() == 0 for g in seen["decoder"]) == wanted_zero
        assert model.last_gate == (True, not gate)


def test_recipe_takes_a_kl_warm_up_and_the_gate():
    """cifar-vae-gan with a beta-kl warm-up and the equilibrium gate builds (vae-gan applies the loss's
    KL schedule; it was refused as a schedule the family would ignore) and has both in effect."""
    warm_up = 'loss={name="beta-kl",beta=1.0,warmup_steps=80}'
    model = build("cifar-vae-gan", ["model.disc_hidden=[4,8]", "model.gate=true", warm_up])
    assert model.gate and (model.equilibrium, model.margin) == (0.68, 0.35)
    assert model.loss.kl_weight(0) == 0.0 and 0 < model.loss.kl_weight(40) < 1 and model.loss.kl_weight(80) == 1.0
    assert model.loss.kl_weight(None) == 1.0


def test_rejects_bad_keys():
    for keys, message in (
        ({"gate": 1}, "gate"),
        ({"equilibrium": -0.5}, "equilibrium"),
        ({"margin": math.inf}, "margin"),
        ({"pixel_weight": -1.0}, "pixel_weight"),
        ({"gamma": -1.0}, "gamma"),
        ({"gan_loss": "wasserstein"}, "gan_loss"),
        ({"disc_hidden": [4, 8, 8, 8, 8, 8]}, "divisible"),
    ):
        with pytest.raises(ValueError, match=message):
            small_model(**keys)


# End to end on real CIFAR-10 (tiny widths).
FAMILY = Family("cifar-vae-gan", [*TINY_SETS, "model.disc_hidden=[4,8]", "train.test_limit=32"])
GAN_TERMS = {"feature_recon", "gan_discriminator", "gan_generator"}


straight = FAMILY.straight_fixture()


def test_run_sample_and_eval(cifar: Path, straight: Path, tmp_path: Path) -> None:
    last = metrics(straight)[-1]
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_kl"])
    assert set(last["test_terms"]) == GAN_TERMS
    assert all(math.isfinite(v) for v in last["test_terms"].values()) and "test_bits_per_dim" not in last
    text = FAMILY.sample_and_eval(straight, cifar, tmp_path)
    assert "gan_discriminator" in text and "vae-gan" in text and 'bits_per_dim": 0' not in text


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    """Three optimizers' state and the GAN's noise carry over: 1 + 1 epochs is 2 epochs, bit for bit."""
    FAMILY.assert_resume_is_bit_exact(cifar, straight, tmp_path, "test_terms")


@pytest.mark.slow
def test_nproc_2_writes_one_set_of_files(cifar: Path, tmp_path: Path) -> None:
    (row,) = FAMILY.nproc(cifar, tmp_path / "two")
    assert set(row["test_terms"]) == GAN_TERMS
