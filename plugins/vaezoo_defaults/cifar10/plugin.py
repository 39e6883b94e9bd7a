"""Registers the `cifar10` dataset."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_datasets(register):
    register(
        "cifar10",
        "vaezoo_defaults.cifar10.dataset:CIFAR10",
        summary="CIFAR-10, 32x32 RGB, 50,000 train / 10,000 test images in 10 classes",
    )
