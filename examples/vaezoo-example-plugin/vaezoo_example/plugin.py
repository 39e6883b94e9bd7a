"""The plugin module named by the entry point. It only registers names: the model code in
`vaezoo_example.model` (and torch) is imported the first time a recipe uses it."""

import vaezoo


@vaezoo.hookimpl
def register_encoders(register):
    register("dcgan", "vaezoo_example.model:DCGANEncoder", summary="DCGAN-style stride-2 convolutions with batch norm and LeakyReLU")


@vaezoo.hookimpl
def register_decoders(register):
    register("dcgan", "vaezoo_example.model:DCGANDecoder", summary="DCGAN-style stride-2 transposed convolutions with batch norm and ReLU")


@vaezoo.hookimpl
def register_recipes(register):
    register("example-dcgan-cifar", {
        "summary": "DCGAN-style VAE with batch norm on CIFAR-10 (from the example plugin)",
        "latent_dim": 64,
        "dataset": {"name": "cifar10"},
        "encoder": {"name": "dcgan", "hidden": [64, 128, 256]},
        "decoder": {"name": "dcgan", "hidden": [256, 128, 64]},
        "prior": {"name": "normal"},
        "loss": {"name": "bce-kl"},
        "train": {"epochs": 20, "batch_size": 128, "lr": 2e-4, "optimizer": "adam"},
    })
