"""Registers the `mog` and `vamp` priors (imported only when used)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_priors(register):
    register(
        "mog",
        "vaezoo_defaults.mixture.priors:MixturePrior",
        summary="Learnable mixture of diagonal Gaussians (means, variances and weights)",
    )
    register(
        "vamp",
        "vaezoo_defaults.mixture.priors:VampPrior",
        summary="VampPrior: mixture of the encoder's posteriors of learned pseudo-inputs",
    )
