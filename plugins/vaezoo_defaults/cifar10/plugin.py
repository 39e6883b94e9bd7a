"""Registers the `cifar10` dataset."""

import vaezoo


@vaezoo.hookimpl
def register_datasets(register):
    register(
        "cifar10",
        "vaezoo_defaults.cifar10.dataset:CIFAR10",
        summary="CIFAR-10, 32x32 RGB, 50,000 train / 10,000 test images in 10 classes",
    )
