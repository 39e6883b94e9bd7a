"""Registers the `vae-gan` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "vae-gan",
        "vaezoo_defaults.vaegan.model:VAEGAN",
        summary=(
            "VAE-GAN (Larsen et al. 2016): a VAE whose reconstruction is measured in a discriminator's feature "
            "space, trained against that discriminator"
        ),
    )
