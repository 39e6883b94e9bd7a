"""Registers the `vae` model family (imported only when used)."""

import vaezoo


@vaezoo.hookimpl
def register_models(register):
    register(
        "vae",
        "vaezoo_defaults.vae.model:VAE",
        summary="Classic VAE: encoder, decoder, prior and loss components; optional IWAE training (iw_samples)",
    )
