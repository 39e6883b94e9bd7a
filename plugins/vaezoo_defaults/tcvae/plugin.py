"""Registers the `beta-tcvae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "beta-tcvae",
        "vaezoo_defaults.tcvae.model:BetaTCVAE",
        summary=(
            "beta-TCVAE (Chen et al. 2018): the KL split into index-code mutual information, total correlation "
            "(weighted by beta) and dimension-wise KL"
        ),
    )
