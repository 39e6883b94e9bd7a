"""Registers the `wae` model family (imported only when used)."""

import vaezoo


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
