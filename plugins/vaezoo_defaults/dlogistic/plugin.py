"""Registers the `dlogistic-kl` loss."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_losses(register):
    register(
        "dlogistic-kl",
        "vaezoo_defaults.dlogistic.loss:DiscretizedLogisticKL",
        summary="Discretized logistic mixture over the 256 pixel values (PixelCNN++) + KL",
    )
