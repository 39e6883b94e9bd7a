"""Registers the `mlp` encoder and decoder (imported only when used)."""

import vaezoo


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
