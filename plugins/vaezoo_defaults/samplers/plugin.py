"""Registers the `gmm` sampler (the ex-post density of Ghosh et al. 2020)."""

import vaezoo


@vaezoo.hookimpl
def register_samplers(register):
    register(
        "gmm",
        "vaezoo_defaults.samplers.gmm:GaussianMixtureSampler",
        summary="Full-covariance Gaussian mixture fitted by EM to the training codes (Ghosh et al. 2020)",
    )
