"""Registers the `cvae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "cvae",
        "vaezoo_defaults.cvae.model:ConditionalVAE",
        summary="Class-conditional VAE: the label goes into the encoder and the decoder",
    )
