"""Registers the `image-folder` dataset."""

import vaezoo


@vaezoo.hookimpl
def register_datasets(register):
    register(
        "image-folder",
        "vaezoo_defaults.imagefolder.dataset:ImageFolder",
        summary="Any folder of images, resized and centre-cropped to size x size",
    )
