"""Registers the `mog` and `vamp` priors (imported only when used)."""

import vaezoo


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
