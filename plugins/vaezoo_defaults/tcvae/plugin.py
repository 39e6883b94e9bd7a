"""Registers the `beta-tcvae` model family (imported only when used)."""

import vaezoo


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
