"""Registers the `gmm` sampler (the ex-post density of Ghosh et al. 2020)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_samplers(register):
    register(
        "gmm",
        "vaezoo_defaults.samplers.gmm:GaussianMixtureSampler",
        summary="Full-covariance Gaussian mixture fitted by EM to the training codes (Ghosh et al. 2020)",
    )
