"""Registers the `mnist` and `fashion-mnist` datasets."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_datasets(register):
    register(
        "mnist",
        "vaezoo_defaults.mnist.dataset:MNIST",
        summary="MNIST handwritten digits, 28x28 grayscale, 60,000 train / 10,000 test images",
    )
    register(
        "fashion-mnist",
        "vaezoo_defaults.mnist.dataset:FashionMNIST",
        summary="Fashion-MNIST clothing, 28x28 grayscale, 60,000 train / 10,000 test images",
    )
