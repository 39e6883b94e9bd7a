"""Registers the `vae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "vae",
        "vaezoo_defaults.vae.model:VAE",
        summary="Classic VAE: encoder, decoder, prior and loss components; optional IWAE training (iw_samples)",
    )
