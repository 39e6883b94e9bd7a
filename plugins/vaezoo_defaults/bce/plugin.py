"""Registers the `bce-kl` loss."""

import vaezoo


@vaezoo.hookimpl
def register_losses(register):
    register(
        "bce-kl",
        "vaezoo_defaults.bce.loss:BCEKL",
        summary="Binary cross-entropy summed over pixels + KL (the notebook loss)",
    )
