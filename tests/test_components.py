"""The default components: conv encoder/decoder, normal prior, bce-kl loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D

import vaezoo
from vaezoo.errors import RecipeError
from vaezoo_defaults.bce.loss import BCEKL
from vaezoo_defaults.conv.model import ConvDecoder, ConvEncoder
from vaezoo_defaults.normal.prior import NormalPrior


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- conv encoder / decoder -------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [(8, 8), (16, 24), (32, 32)])
def test_conv_encoder_and_decoder_shapes(channels, size):
    in_shape = (channels, *size)
    encoder = ConvEncoder(in_shape=in_shape, latent_dim=5, hidden=[4, 8, 8])
    mu, logvar = encoder(torch.rand(2, *in_shape))
    assert mu.shape == logvar.shape == (2, 5)
    for k in (1, 2):  # the decoder gives k parameters per image channel
        out_shape = (channels * k, *size)
        decoder = ConvDecoder(out_shape=out_shape, latent_dim=5, hidden=[8, 8, 4])
        assert decoder(torch.randn(2, 5)).shape == (2, *out_shape)


def test_conv_default_widths_are_the_notebook_ones():
    encoder = ConvEncoder(in_shape=(3, 32, 32), latent_dim=20)
    decoder = ConvDecoder(out_shape=(3, 32, 32), latent_dim=20)
    assert [m.out_channels for m in encoder.features if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128]
    assert decoder.fc.out_features == 128 * 4 * 4
    assert decoder(torch.randn(3, 20)).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("size", [(30, 32), (32, 12), (7, 7)])
def test_conv_needs_sizes_divisible_by_8(size):
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvEncoder(in_shape=(3, *size), latent_dim=4)
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvDecoder(out_shape=(3, *size), latent_dim=4)


def test_conv_bad_size_is_a_recipe_error_when_built():
    from vaezoo.recipes.build import build_model
    from vaezoo.recipes.resolve import resolve_recipe

    with pytest.raises(RecipeError, match="divisible by 8"):
        build_model(resolve_recipe("cifar-vae"), (3, 28, 28))


# -- normal prior -------------------------------------------------------------------------------


def test_normal_prior_closed_form_kl_matches_torch_distributions():
    prior = NormalPrior(latent_dim=6)
    mu, logvar = torch.randn(4, 6) * 2, torch.randn(4, 6)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    q = D.Independent(D.Normal(mu, (0.5 * logvar).exp()), 1)
    p = D.Independent(D.Normal(torch.zeros(6), torch.ones(6)), 1)
    torch.testing.assert_close(prior.kl(mu, logvar, z), D.kl_divergence(q, p), rtol=1e-5, atol=1e-5)


def test_normal_prior_closed_form_kl_matches_monte_carlo():
    prior = NormalPrior(latent_dim=3)
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.3, -0.7, 0.1]])
    z = mu + torch.randn(200_000, 3) * (0.5 * logvar).exp()
    monte_carlo = vaezoo.Prior.kl(prior, mu.expand_as(z), logvar.expand_as(z), z).mean()  # log q(z) - log p(z)
    assert monte_carlo.item() == pytest.approx(prior.kl(mu, logvar, z[:1]).item(), rel=1e-2)


def test_normal_prior_sample_and_log_prob():
    prior = NormalPrior(latent_dim=4)
    assert prior.sample(7).shape == (7, 4)
    z = torch.randn(5, 4)
    torch.testing.assert_close(prior.log_prob(z), D.Normal(0.0, 1.0).log_prob(z).sum(-1))


# -- bce-kl loss --------------------------------------------------------------------------------


def notebook_loss(logits, x, mu, logvar):
    """The seed notebook's loss, summed over the batch."""
    bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def _parts(logits, x, mu, logvar):
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    return BCEKL()(x, logits, mu, logvar, z, NormalPrior(latent_dim=mu.shape[1]))


def test_bce_kl_equals_the_notebook_formula():
    x, logits = torch.rand(4, 3, 8, 8), torch.randn(4, 3, 8, 8) * 3
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    parts = _parts(logits, x, mu, logvar)
    assert parts.loss.shape == parts.recon.shape == parts.kl.shape == (4,)
    torch.testing.assert_close(parts.loss.sum(), notebook_loss(logits, x, mu, logvar), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(parts.loss, parts.recon + parts.kl)


def test_bce_kl_is_stable_for_huge_logits():
    x = torch.tensor([0.0, 1.0, 0.3, 0.0, 1.0, 0.7]).view(1, 1, 2, 3)
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0, 100.0, -100.0]).view(1, 1, 2, 3)
    mu, logvar = torch.zeros(1, 2), torch.zeros(1, 2)
    parts = _parts(logits, x, mu, logvar)
    assert torch.isfinite(parts.loss).all()
    expected = F.softplus(logits) - x * logits  # the exact BCE from logits, per pixel
    torch.testing.assert_close(parts.recon, expected.sum().view(1))
    logits.requires_grad_(True)
    _parts(logits, x, mu, logvar).loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_bce_kl_under_bf16_autocast():
    x, logits = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8) * 4
    logits[0, 0, 0, :2] = torch.tensor([100.0, -100.0])
    mu, logvar = torch.randn(2, 5), torch.randn(2, 5)
    reference = _parts(logits, x, mu, logvar)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = _parts(logits.bfloat16(), x, mu.bfloat16(), logvar.bfloat16())
    assert parts.loss.dtype == torch.float32 and torch.isfinite(parts.loss).all()
    torch.testing.assert_close(parts.loss, reference.loss, rtol=2e-2, atol=1.0)


def test_bce_kl_mean_image_is_in_unit_range():
    image = BCEKL().mean_image(torch.tensor([-1000.0, 0.0, 1000.0]))
    assert image.tolist() == [0.0, 0.5, 1.0]


def test_loss_image_is_the_mean_image_clamped_to_unit_range():
    class Overshoot(vaezoo.Loss):
        def mean_image(self, out):
            return out * 2

    out = torch.tensor([-1.0, 0.25, 0.375, 3.0])
    assert Overshoot().image(out).tolist() == [0.0, 0.5, 0.75, 1.0]
    logits = torch.randn(2, 3, 4, 4) * 5
    assert torch.equal(BCEKL().image(logits), BCEKL().mean_image(logits).clamp(0, 1))


def test_implements_tells_which_optional_capabilities_a_family_defines():
    from vaezoo.components import implements
    from vaezoo_defaults.rae.model import RAE
    from vaezoo_defaults.vae.model import VAE

    class Bare(vaezoo.Model):
        pass

    class Interpolates(Bare):
        def encode(self, x, y=None):
            return x

        def decode(self, z, y=None):
            return z

    class Assigned(Bare):
        def __init__(self):
            super().__init__()
            self.log_likelihood = lambda x, y=None, k=100: x.sum()

    optional = ("log_likelihood", "encode", "decode", "training_step")
    assert not any(implements(Bare(), name) for name in optional)
    assert [implements(Interpolates(), name) for name in optional] == [False, True, True, False]
    assert implements(Assigned(), "log_likelihood")
    assert all(implements(VAE, name) for name in optional[:3])  # through vaezoo_defaults' EncoderDecoderFamily
    assert implements(RAE, "encode") and not implements(RAE, "log_likelihood")
    with pytest.raises(NotImplementedError, match="does not define encode"):
        Bare().encode(torch.zeros(1))


def test_what_vaezoo_sets_on_a_model_has_defaults_on_a_model_built_by_hand():
    model = vaezoo.Model()
    assert dict(model.recipe) == {} and dict(model.metadata) == {} and model.classes == ()


def test_build_model_records_its_recipe_and_the_registry_entries_it_used():
    from vaezoo.files.model_file import component_records
    from vaezoo.recipes.build import build_model

    recipe = vaezoo.resolve_recipe("cifar-vae", ["encoder.hidden=[4,8,8]", "decoder.hidden=[8,8,4]", "latent_dim=2"])
    model = build_model(recipe, (3, 32, 32), ("a", "b"))
    registry = vaezoo.get_registry()
    assert model.recipe is recipe and model.classes == ("a", "b")
    kinds = {"model": "models", "encoder": "encoders", "decoder": "decoders", "prior": "priors", "loss": "losses"}
    names = {"model": "vae", **{key: recipe[key]["name"] for key in kinds if key != "model"}}
    assert model.registry_entries == {key: registry.get(kind, names[key]) for key, kind in kinds.items()}
    records = component_records(recipe, model.registry_entries)
    assert [r["kind"] for r in records] == ["model", "dataset", "encoder", "decoder", "prior", "loss"]
    assert records == component_records(recipe, {})  # a model built by hand: the registry names them alike


def test_images_without_values_are_a_broken_contract():
    """A family's `sample` returning a meta or sparse tensor of the right shape is one line naming it
    (the red team's: an internal error at the epoch-end pictures before)."""
    from vaezoo.components import checked_images
    from vaezoo.errors import PluginError

    model = torch.nn.Linear(1, 1)
    assert checked_images(model, "sample", torch.zeros(2, 3, 4, 4), 2).shape == (2, 3, 4, 4)
    for images in (torch.zeros(2, 3, 4, 4, device="meta"), torch.zeros(2, 3, 4, 4).to_sparse()):
        with pytest.raises(PluginError, match="expected a dense float tensor"):
            checked_images(model, "sample", images, 2)
