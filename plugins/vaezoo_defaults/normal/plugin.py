"""Registers the `normal` prior."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_priors(register):
    register(
        "normal", "vaezoo_defaults.normal.prior:NormalPrior", summary="Standard normal N(0, I) with closed-form KL"
    )
