"""Registers the `conv` encoder and decoder (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_encoders(register):
    register(
        "conv",
        "vaezoo_defaults.conv.model:ConvEncoder",
        summary="Stride-2 4x4 convolutions with ReLU, linear heads to mu and logvar",
    )


@vaezoo.hookimpl
def register_decoders(register):
    register(
        "conv",
        "vaezoo_defaults.conv.model:ConvDecoder",
        summary="Linear layer then stride-2 4x4 transposed convolutions (mirror of the conv encoder)",
    )
