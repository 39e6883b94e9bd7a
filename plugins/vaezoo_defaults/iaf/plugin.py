"""Registers the `iaf-vae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "iaf-vae",
        "vaezoo_defaults.iaf.model:IAFVAE",
        summary=(
            "VAE with an inverse autoregressive flow posterior (Kingma et al. 2016); importance-weighted log-likelihood"
        ),
    )
