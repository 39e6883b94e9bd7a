"""Registers the `hvae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "hvae",
        "vaezoo_defaults.hvae.model:HierarchicalVAE",
        summary="Top-down hierarchical VAE (VDVAE style): latent levels at several resolutions, residual cells",
    )
