"""Registers the `aae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "aae",
        "vaezoo_defaults.aae.model:AdversarialAE",
        summary=(
            "Adversarial autoencoder (Makhzani et al. 2015): a deterministic autoencoder whose codes are matched "
            "to the prior by a discriminator"
        ),
    )
