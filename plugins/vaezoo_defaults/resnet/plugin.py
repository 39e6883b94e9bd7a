"""Registers the `resnet` encoder and decoder (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_encoders(register):
    register(
        "resnet",
        "vaezoo_defaults.resnet.model:ResNetEncoder",
        summary="Residual blocks with GroupNorm and SiLU, stride-2 downsampling, linear heads to mu and logvar",
    )


@vaezoo.hookimpl
def register_decoders(register):
    register(
        "resnet",
        "vaezoo_defaults.resnet.model:ResNetDecoder",
        summary="Linear layer, residual blocks and stride-2 transposed convolutions (mirror of the resnet encoder)",
    )
