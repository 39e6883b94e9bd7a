"""The Inception-v3 weights that FID and KID need (vaezoo.trainer.sample_quality): fetched on first use into
`<vaezoo cache>/fid/` (vaezoo.sharing.hub's download: bounded, nothing left behind) or read from
VAEZOO_FID_WEIGHTS. vaezoo never unpickles the file: it is read with `torch.load(weights_only=True)`
(tensors only) and written again into a private temporary file, and torch-fidelity (whose loader
unpickles) reads that one. See docs/evaluation.md."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from vaezoo.errors import first_line
from vaezoo.files.model_header import file_sha256
from vaezoo.sharing.hub import HubError, download_file, downloads_dir, inside_cache
from vaezoo.trainer.sample_quality import INCEPTION, FidError

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # as torch.hub names files: the start of their sha256
WEIGHTS_ENV = "VAEZOO_FID_WEIGHTS"
MAX_WEIGHTS_BYTES = 512 * 2**20  # the real file is about 91 MiB


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
        raise FidError(f"{error} (or download {url} and set {WEIGHTS_ENV}=PATH)") from error
    target = folder / WEIGHTS_FILE
    put_it = f"download {url} and put it at {target} (or set {WEIGHTS_ENV}=PATH)"
    if not os.path.lexists(target):
        try:
            download_file(url, target)
        except HubError as error:
            raise FidError(f"cannot get the Inception weights that --fid needs ({error}): {put_it}") from error
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
        raise FidError(f"cannot read the Inception weights {path}: {error.strerror or error}") from error
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
        raise FidError(f"{path} is not a weights file vaezoo reads (a state dict of tensors): {reason}") from error
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
            ) from error
        yield private
