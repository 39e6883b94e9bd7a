"""Registers the `cvae` model family (imported only when used)."""

import vaezoo


@vaezoo.hookimpl
def register_models(register):
    register(
        "cvae",
        "vaezoo_defaults.cvae.model:ConditionalVAE",
        summary="Class-conditional VAE: the label goes into the encoder and the decoder",
    )
