"""Registers the `gaussian-kl` loss."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_losses(register):
    register(
        "gaussian-kl",
        "vaezoo_defaults.gaussian.loss:GaussianKL",
        summary="Gaussian likelihood (fixed sigma or learned per-pixel variance) + KL",
    )
