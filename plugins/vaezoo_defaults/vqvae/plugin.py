"""Registers the `vqvae` model family (imported only when used)."""

import vaezoo


@vaezoo.hookimpl
def register_models(register):
    register(
        "vqvae",
        "vaezoo_defaults.vqvae.model:VQVAE",
        summary="VQ-VAE: a codebook of discrete latents, straight-through gradients, a prior over the codes",
    )
