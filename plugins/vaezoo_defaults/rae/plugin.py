"""Registers the `rae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "rae",
        "vaezoo_defaults.rae.model:RAE",
        summary=(
            "Regularized autoencoder (Ghosh et al. 2020): deterministic, with a latent and decoder penalty, "
            "sampled from an ex-post Gaussian mixture fitted to its codes"
        ),
    )
