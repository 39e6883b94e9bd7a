"""The plugin module named by the entry point. It only registers names: the model code in
`vaezoo_example.model` (and torch) is imported the first time a recipe uses it."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_encoders(register):
    register(
        "dcgan",
        "vaezoo_example.model:DCGANEncoder",
        summary="DCGAN-style stride-2 convolutions with batch norm and LeakyReLU",
    )


@vaezoo.hookimpl
def register_decoders(register):
    register(
        "dcgan",
        "vaezoo_example.model:DCGANDecoder",
        summary="DCGAN-style stride-2 transposed convolutions with batch norm and ReLU",
    )


@vaezoo.hookimpl
def register_models(register):
    register(
        "laplace",
        "vaezoo_example.family:LaplaceVAE",
        summary="VAE with a Laplace posterior and a standard Laplace prior (closed-form KL)",
    )


@vaezoo.hookimpl
def register_recipes(register):
    register(
        "example-dcgan-cifar",
        {
            "summary": "DCGAN-style VAE with batch norm on CIFAR-10 (from the example plugin)",
            "latent_dim": 64,
            "dataset": {"name": "cifar10"},
            "encoder": {"name": "dcgan", "hidden": [64, 128, 256]},
            "decoder": {"name": "dcgan", "hidden": [256, 128, 64]},
            "prior": {"name": "normal"},
            "loss": {"name": "bce-kl"},
            "train": {"epochs": 20, "batch_size": 128, "lr": 2e-4, "optimizer": "adam"},
        },
    )
    register(
        "example-laplace-cifar",
        {
            "summary": (
                "Laplace-posterior VAE on CIFAR-10: the example plugin's model family, with the conv decoder and "
                "the BCE likelihood"
            ),
            "latent_dim": 32,
            "model": {"name": "laplace", "hidden": [32, 64, 128]},
            "dataset": {"name": "cifar10"},
            "decoder": {"name": "conv", "hidden": [128, 64, 32]},
            "loss": {"name": "bce-kl"},
            "train": {"epochs": 15, "batch_size": 128, "lr": 1e-3, "optimizer": "adam"},
        },
    )
