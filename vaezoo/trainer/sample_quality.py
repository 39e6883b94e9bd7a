"""Sample quality: the Fréchet Inception Distance (FID) and Kernel Inception Distance (KID) of a model's
samples against a split's images, through torch-fidelity (the optional extra `vaezoo[fid]`) and its
`inception-v3-compat` feature extractor: the Inception-v3 weights of the TensorFlow FID code, so the
numbers compare with published ones.

The Inception weights file is fetched, checked and rewritten by vaezoo.sharing.fid_weights (a download:
sharing/ owns them); this module takes the private file it gives. See docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import Model
from vaezoo.errors import VaezooError

FID_INSTALL = "pip install 'vaezoo[fid]'"
INCEPTION = "inception-v3-compat"
DEFAULT_SAMPLES = 10_000
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, smaller where there are fewer images
KID_SUBSETS = 100
FEATURE_BATCH = 64  # images through the feature network at once
FID_KEYS = ("fid", "kid_mean", "kid_std", "fid_samples")

Advance = Callable[[str, int, int], None]  # (what, done, total): progress of each stage


class FidError(VaezooError):
    """FID cannot be computed: torch-fidelity or the Inception weights are missing or unusable, or the
    images are not of a kind Inception takes."""


def import_fidelity() -> ModuleType:
    """torch_fidelity, or a FidError saying what to install."""
    try:
        import torch_fidelity
    except ImportError as error:
        raise FidError(f"--fid needs the torch-fidelity package: {FID_INSTALL}") from error
    return torch_fidelity


def check_channels(channels: int) -> None:
    """A FidError unless images of `channels` channels can go through Inception (1: repeated, or 3)."""
    if channels not in (1, 3):
        raise FidError(f"--fid needs images of 1 (grayscale) or 3 (RGB) channels; this model's have {channels}")


def as_rgb_uint8(images: Tensor) -> Tensor:
    """`(N, C, H, W)` images (uint8, or float in [0, 1] quantised as a PNG is) as uint8 with 3 channels:
    grayscale repeated; a FidError for other channel counts."""
    channels = images.shape[1]
    check_channels(channels)
    if images.dtype != torch.uint8:
        images = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1).contiguous() if channels == 1 else images


class _Images(torch.utils.data.Dataset):
    """uint8 RGB images, one at a time, as torch-fidelity reads a dataset; `advance` is told each read."""

    def __init__(self, images: Tensor, what: str, advance: Advance | None) -> None:
        self.images, self.what, self.advance = images, what, advance

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        if self.advance is not None:
            self.advance(self.what, index + 1, len(self.images))
        return self.images[index]


def _registered(extractor: type) -> str:
    """The name of a custom torch-fidelity feature extractor class, registered on first use."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = f"vaezoo-{extractor.__qualname__.replace('.', '-')}-{id(extractor):x}"
    if FEATURE_EXTRACTORS_REGISTRY.get(name) is not extractor:
        register_feature_extractor(name, extractor)
    return name


def sample_quality(
    model: Model,
    images: Tensor,
    *,
    samples: int,
    seed: int = 0,
    weights: Path | None = None,
    feature_extractor: type | None = None,
    advance: Advance | None = None,
) -> dict[str, Any]:
    """FID and KID (`compare_images`) of `samples` model samples, drawn as `vaezoo sample -n samples
    --seed seed` draws them, against uint8 `images`; `fid_samples` says how many."""
    from vaezoo.trainer.sampling import sample_images

    import_fidelity()
    if samples < 2:
        raise FidError(f"FID and KID need at least 2 samples; got --fid-samples {samples}")
    if advance is not None:
        advance("sampling", 0, samples)
    drawn = sample_images(model, samples, seed=seed)
    if advance is not None:
        advance("sampling", samples, samples)
    device = next(model.parameters()).device
    quality = compare_images(
        drawn, images, seed=seed, weights=weights, feature_extractor=feature_extractor, device=device, advance=advance
    )
    return {**quality, "fid_samples": samples}


def compare_images(
    first: Tensor,
    second: Tensor,
    *,
    seed: int = 0,
    weights: Path | None = None,
    feature_extractor: type | None = None,
    device: torch.device | None = None,
    advance: Advance | None = None,
) -> dict[str, float]:
    """`fid`, `kid_mean` and `kid_std` between two sets of `(N, C, H, W)` images (uint8, or float in
    [0, 1]) through torch-fidelity: with its Inception-v3 and `weights` (the private file that
    `vaezoo.sharing.fid_weights.private_weights` wrote), or with `feature_extractor` (a torch-fidelity
    FeatureExtractorBase subclass, e.g. a small network in tests), on `device`. KID averages KID_SUBSETS
    subsets of up to KID_SUBSET_SIZE images of each set, drawn with `seed`. `advance(what, done, total)`
    hears the progress of the feature extraction."""
    fidelity = import_fidelity()
    if len(first) < 2 or len(second) < 2:
        raise FidError(f"FID and KID need at least 2 images in each set; got {len(first)} and {len(second)}")
    device = device or torch.device("cpu")
    first, second = as_rgb_uint8(first), as_rgb_uint8(second)
    settings: dict[str, Any] = dict(
        input1=_Images(first, "features of the samples", advance),
        input2=_Images(second, "features of the real images", advance),
        fid=True,
        kid=True,
        kid_subsets=KID_SUBSETS,
        kid_subset_size=min(KID_SUBSET_SIZE, len(first), len(second)),
        rng_seed=seed,
        batch_size=FEATURE_BATCH,
        cuda=device.type == "cuda",
        cache=False,
        save_cpu_ram=True,  # reads the datasets in this process (no workers): `advance` is called here
        verbose=False,
        datasets_download=False,
    )
    if feature_extractor is not None:
        settings["feature_extractor"] = _registered(feature_extractor)
    elif weights is not None:
        settings.update(feature_extractor=INCEPTION, feature_extractor_weights_path=str(weights))
    else:
        raise ValueError("compare_images needs the checked Inception `weights` file or a `feature_extractor`")
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        result = fidelity.calculate_metrics(**settings)
    return {
        "fid": result["frechet_inception_distance"],
        "kid_mean": result["kernel_inception_distance_mean"],
        "kid_std": result["kernel_inception_distance_std"],
    }
