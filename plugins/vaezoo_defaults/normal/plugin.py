"""Registers the `normal` prior."""

import vaezoo


@vaezoo.hookimpl
def register_priors(register):
    register(
        "normal", "vaezoo_defaults.normal.prior:NormalPrior", summary="Standard normal N(0, I) with closed-form KL"
    )
