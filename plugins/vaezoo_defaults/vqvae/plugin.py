"""Registers the `vqvae` model family (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_models(register):
    register(
        "vqvae",
        "vaezoo_defaults.vqvae.model:VQVAE",
        summary="VQ-VAE: a codebook of discrete latents, straight-through gradients, a prior over the codes",
    )
    register(
        "vqvae-pixelcnn",
        "vaezoo_defaults.vqvae.two_stage:VQPixelCNN",
        summary="Two-stage VQ-VAE: a gated PixelCNN prior trained over the codes of a frozen vqvae model file",
    )
