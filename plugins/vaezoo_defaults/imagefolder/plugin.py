"""Registers the `image-folder` dataset."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_datasets(register):
    register(
        "image-folder",
        "vaezoo_defaults.imagefolder.dataset:ImageFolder",
        summary="Any folder of images, resized and centre-cropped to size x size",
    )
