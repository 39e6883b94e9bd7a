"""Registers the `iaf-vae` model family (imported only when used)."""

import vaezoo


@vaezoo.hookimpl
def register_models(register):
    register(
        "iaf-vae",
        "vaezoo_defaults.iaf.model:IAFVAE",
        summary=(
            "VAE with an inverse autoregressive flow posterior (Kingma et al. 2016); importance-weighted log-likelihood"
        ),
    )
