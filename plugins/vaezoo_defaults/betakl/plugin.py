"""Registers the `beta-kl` loss."""

import vaezoo


@vaezoo.hookimpl
def register_losses(register):
    register(
        "beta-kl",
        "vaezoo_defaults.betakl.loss:BetaKL",
        summary="BCE summed over pixels + beta * KL, with optional linear KL warm-up",
    )
