"""Registers the `wae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "wae",
        "vaezoo_defaults.wae.model:WAE",
        summary=(
            "Wasserstein autoencoder with the MMD penalty (Tolstikhin et al. 2018): reconstruction + lambda * "
            "MMD(q(z), p(z))"
        ),
    )
