"""Registers the `mlp` encoder and decoder (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_encoders(register):
    register(
        "mlp",
        "vaezoo_defaults.mlp.model:MLPEncoder",
        summary="Fully connected layers with ReLU on the flattened image, linear heads to mu and logvar",
    )


@vaezoo.hookimpl
def register_decoders(register):
    register(
        "mlp",
        "vaezoo_defaults.mlp.model:MLPDecoder",
        summary="Fully connected layers with ReLU, reshaped to the image (mirror of the mlp encoder)",
    )
