"""The example plugin's own tests: vaezoo's conformance checks on its components."""

import pytest
from vaezoo_example.family import LaplaceVAE
from vaezoo_example.model import DCGANDecoder, DCGANEncoder

from vaezoo.testing import check_decoder, check_encoder, check_model, component


def test_encoder_conforms():
    check_encoder(DCGANEncoder, in_shape=(3, 32, 32), latent_dim=8, hidden=[8, 16])


def test_decoder_conforms():
    # bce-kl needs one output per image channel; dlogistic-kl with n_mix=2 would need 3 * 2 per channel.
    check_decoder(DCGANDecoder, out_shape=(3, 32, 32), latent_dim=8, hidden=[16, 8])
    check_decoder(DCGANDecoder, out_shape=(18, 32, 32), in_shape=(3, 32, 32), latent_dim=8, hidden=[16, 8])


def test_shapes_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        DCGANEncoder(in_shape=(1, 28, 28), latent_dim=4, hidden=[8, 8, 8])


def test_laplace_family_conforms():
    loss = component("loss", "bce-kl")
    decoder = component("decoder", "conv", in_shape=(3, 32, 32), latent_dim=6, loss=loss, hidden=[16, 8])
    model = check_model(
        LaplaceVAE, in_shape=(3, 32, 32), latent_dim=6, components={"decoder": decoder, "loss": loss}, hidden=[8, 16]
    )
    assert not model.discrete and not model.conditional
    dlogistic = component("loss", "dlogistic-kl", n_mix=2)
    decoder = component("decoder", "conv", latent_dim=6, loss=dlogistic, hidden=[16, 8])
    assert check_model(
        LaplaceVAE, latent_dim=6, components={"decoder": decoder, "loss": dlogistic}, hidden=[8, 16]
    ).discrete
    with pytest.raises(AssertionError, match="takes no prior"):
        check_model(
            LaplaceVAE,
            latent_dim=6,
            components={"decoder": decoder, "loss": dlogistic, "prior": component("prior", "normal", latent_dim=6)},
        )
