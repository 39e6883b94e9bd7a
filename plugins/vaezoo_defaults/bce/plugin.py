"""Registers the `bce-kl` loss."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_losses(register):
    register(
        "bce-kl",
        "vaezoo_defaults.bce.loss:BCEKL",
        summary="Binary cross-entropy summed over pixels + KL (the notebook loss)",
    )
