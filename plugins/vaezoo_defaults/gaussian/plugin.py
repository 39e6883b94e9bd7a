"""Registers the `gaussian-kl` loss."""

import vaezoo


@vaezoo.hookimpl
def register_losses(register):
    register(
        "gaussian-kl",
        "vaezoo_defaults.gaussian.loss:GaussianKL",
        summary="Gaussian likelihood (fixed sigma or learned per-pixel variance) + KL",
    )
