"""Registers the `hvae` model family (imported only when used)."""

import vaezoo


@vaezoo.hookimpl
def register_models(register):
    register(
        "hvae",
        "vaezoo_defaults.hvae.model:HierarchicalVAE",
        summary="Top-down hierarchical VAE (VDVAE style): latent levels at several resolutions, residual cells",
    )
