"""Registers the `beta-kl` loss."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_losses(register):
    register(
        "beta-kl",
        "vaezoo_defaults.betakl.loss:BetaKL",
        summary="BCE summed over pixels + beta * KL, with optional linear KL warm-up",
    )
