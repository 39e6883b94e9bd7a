"""Sample quality: the Fréchet Inception Distance (FID) and Kernel Inception Distance (KID) of a model's
samples against a split's images, through torch-fidelity (the optional extra `vaezoo[fid]`) and its
`inception-v3-compat` feature extractor: the Inception-v3 weights of the TensorFlow FID code, so the
numbers compare with published ones.

The weights file is fetched on first use into `<vaezoo cache>/fid/` (vaezoo.sharing.hub's download:
bounded, nothing left behind) or read from VAEZOO_FID_WEIGHTS. vaezoo never unpickles it: it is read
with `torch.load(weights_only=True)` (tensors only) and written again into a private temporary file,
and torch-fidelity (whose loader unpickles) reads that one. See docs/evaluation.md.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import Model
from vaezoo.errors import VaezooError
from vaezoo.files.model_header import file_sha256
from vaezoo.sharing.hub import HubError, download_file, downloads_dir, first_line, inside_cache

FID_INSTALL = "pip install 'vaezoo[fid]'"
INCEPTION = "inception-v3-compat"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # as torch.hub names files: the start of their sha256
WEIGHTS_ENV = "VAEZOO_FID_WEIGHTS"
MAX_WEIGHTS_BYTES = 512 * 2**20  # the real file is about 91 MiB
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
    except ImportError:
        raise FidError(f"--fid needs the torch-fidelity package: {FID_INSTALL}") from None
    return torch_fidelity


def weights_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def inception_weights() -> Path:
    """The Inception-v3 weights file: VAEZOO_FID_WEIGHTS, else `<vaezoo cache>/fid/WEIGHTS_FILE`, downloaded
    there on first use. A FidError (one line naming the URL and where to put the file) when it cannot
    be had."""
    chosen = os.environ.get(WEIGHTS_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise FidError(f"{WEIGHTS_ENV}={chosen}: no such file (it should be the Inception weights {WEIGHTS_FILE})")
        return path
    url = weights_url()
    try:
        folder = downloads_dir("fid")
    except HubError as error:
        raise FidError(f"{error} (or download {url} and set {WEIGHTS_ENV}=PATH)") from None
    target = folder / WEIGHTS_FILE
    put_it = f"download {url} and put it at {target} (or set {WEIGHTS_ENV}=PATH)"
    if not os.path.lexists(target):
        try:
            download_file(url, target)
        except HubError as error:
            raise FidError(f"cannot get the Inception weights that --fid needs ({error}): {put_it}") from None
        if not _is_published(target):
            target.unlink(missing_ok=True)
            raise FidError(
                f"the file downloaded from {url} is not {WEIGHTS_FILE} (its sha256 does not start with "
                f"{WEIGHTS_SHA256_PREFIX}): nothing kept; {put_it}"
            )
    target = inside_cache(target, folder, url, "vaezoo's FID cache")  # a link out of the cache is refused
    if not _is_published(target):
        raise FidError(
            f"{target} is not {WEIGHTS_FILE}: its sha256 does not start with {WEIGHTS_SHA256_PREFIX}; delete it "
            f"(vaezoo downloads it again) or put the published file there"
        )
    return target


def _is_published(path: Path) -> bool:
    """Whether `path` is the published weights file (its sha256 starts as its name says)."""
    return file_sha256(path).startswith(WEIGHTS_SHA256_PREFIX)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, read without unpickling anything but tensors (a FidError for a
    file that is too large, unreadable, or not a flat dict of named tensors)."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise FidError(f"cannot read the Inception weights {path}: {error.strerror or error}") from None
    if size > MAX_WEIGHTS_BYTES:
        raise FidError(
            f"{path} is {size / 2**20:.0f} MiB: not the Inception weights {WEIGHTS_FILE} (about 91 MiB; at most "
            f"{MAX_WEIGHTS_BYTES // 2**20} MiB read)"
        )
    try:
        with warnings.catch_warnings():  # torch's warning about the pickle protocol of older files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # anything but tensors is refused by the weights-only unpickler
        reason = (
            "it holds Python objects other than tensors, which vaezoo never unpickles"
            if type(error).__name__ == "UnpicklingError"  # what the weights-only unpickler raises
            else first_line(error)[:200]
        )
        raise FidError(f"{path} is not a weights file vaezoo reads (a state dict of tensors): {reason}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise FidError(f"{path} is not a state dict of named tensors, as the Inception weights {WEIGHTS_FILE} are")
    return state


@contextmanager
def private_weights(path: Path) -> Iterator[Path]:
    """The tensors of `path` written by vaezoo into a private temporary file (removed afterwards), checked
    to be the weights of torch-fidelity's Inception-v3 (names and shapes): the file torch-fidelity loads."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = read_state_dict(path)
    with tempfile.TemporaryDirectory(prefix="vaezoo-fid-") as folder:
        private = Path(folder) / "inception.pth"
        torch.save(state, private)
        del state
        try:  # torch-fidelity's strict load_state_dict: the names and shapes of its network
            FeatureExtractorInceptionV3(INCEPTION, ["2048"], feature_extractor_weights_path=str(private))
        except RuntimeError as error:
            detail = " ".join(str(error).split())
            if len(detail) > 200:
                detail = detail[:200].rsplit(",", 1)[0] + ", ..."
            raise FidError(
                f"{path} does not hold the Inception-v3 weights torch-fidelity expects ({WEIGHTS_FILE}): {detail}"
            ) from None
        yield private


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
    [0, 1]) through torch-fidelity: with its Inception-v3 and `weights` (the private file
    `private_weights` wrote), or with `feature_extractor` (a torch-fidelity FeatureExtractorBase
    subclass, e.g. a small network in tests), on `device`. KID averages KID_SUBSETS subsets of up to
    KID_SUBSET_SIZE images of each set, drawn with `seed`. `advance(what, done, total)` hears the
    progress of the feature extraction."""
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
