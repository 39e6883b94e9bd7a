"""Registers the `dlogistic-kl` loss."""

import vaezoo


@vaezoo.hookimpl
def register_losses(register):
    register(
        "dlogistic-kl",
        "vaezoo_defaults.dlogistic.loss:DiscretizedLogisticKL",
        summary="Discretized logistic mixture over the 256 pixel values (PixelCNN++) + KL",
    )
