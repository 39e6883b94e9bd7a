"""Pieces the default plugins share: bounds on recipe keys, the Gaussian encoder head, the resolution
check of stride-2 networks, the importance-weighted bound, and downloads through torchvision with a
socket timeout. (The base of most built-in families is public API: `vaezoo.EncoderDecoderFamily`.)"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vaezoo import Encoder, Prior
from vaezoo.components import gaussian_log_prob
from vaezoo.errors import DataError

DOWNLOAD_TIMEOUT_S = 20  # seconds without an answer before a download gives up
MAX_WIDTH = 65536  # channels or units of one layer
MAX_LAYERS = 64  # entries of a `hidden` list, and residual blocks or layers of one stack
MAX_LEVELS = 10  # stride-2 levels: 2**10 = 1024, the largest image side a model file may declare
DECODE_BATCH = 500  # latents decoded at once by a log_likelihood (bounds its memory)


def check_int(plugin: str, key: str, value: object, low: int, high: int) -> int:
    """`value` as an int from `low` to `high`, else a ValueError naming the key (a model file's recipe
    may hold anything: bounds come before any loop or allocation they drive)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        shown = value if isinstance(value, (int, float)) and abs(value) < 10**18 else type(value).__name__
        raise ValueError(f"{plugin} needs {key} from {low} to {high}, got {shown}")
    return value


def check_widths(plugin: str, hidden: Sequence[int]) -> None:
    """`hidden`: at most MAX_LAYERS layer widths, each a whole number from 1 to MAX_WIDTH."""
    if not (isinstance(hidden, Sequence) and not isinstance(hidden, str) and len(hidden) <= MAX_LAYERS):
        raise ValueError(f"{plugin} needs hidden: a list of at most {MAX_LAYERS} layer widths")
    if not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in hidden):
        raise ValueError(f"{plugin} needs hidden widths from 1 to {MAX_WIDTH}, got {list(hidden)}")


def downsampling_factor(plugin: str, shape: Sequence[int], levels: int) -> int:
    """2**levels, after checking that H and W of `shape` divide by it (one stride-2 layer per level)."""
    check_int(plugin, "levels (stride-2 levels)", levels, 1, MAX_LEVELS)
    factor = 2**levels
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"{plugin} needs at least one level and H, W divisible by {factor} for {levels} stride-2 levels, "
            f"got {tuple(shape)}"
        )
    return factor


def is_discrete(loss: object) -> bool:
    """Whether `loss` is a likelihood over the 256 values of each pixel (its `discrete`; False for a loss
    that does not say): what a family built on it sets as `Model.discrete`, so that bits/dim are reported."""
    return bool(getattr(loss, "discrete", False))


class GaussianEncoder(Encoder):
    """`features(x)` flattened to `flat` values, then two linear heads: `mu` and `logvar`."""

    def __init__(self, features: nn.Module, flat: int, latent_dim: int) -> None:
        super().__init__()
        self.features = features
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)


def download(fetch: Callable[[], object], root: Path, hint: str) -> None:
    """Create `root` and run a torchvision download into it with a socket timeout (torchvision sets
    none, so an offline machine would hang); any failure becomes one DataError: `hint` and the reason."""
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else "no network?"
        raise DataError(f"{hint} (download failed: {type(error).__name__}: {reason})") from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def importance_terms(
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    k: int,
    prior: Prior,
    nll: Callable[[Tensor, Tensor], Tensor],
    decode_batch: int,
) -> tuple[Tensor, Tensor]:
    """k samples per image of the Gaussian posterior (mu, logvar): log p(x|z_j) and
    log q(z_j|x) - log p(z_j), each (B, k). `nll(owner, z)` is -log p(x[owner] | z) for rows of latents
    `z` and the indices `owner` of their images; the B * k latents go to it `decode_batch` at a time."""
    mu, logvar = mu.float(), logvar.float()
    z = mu.unsqueeze(1) + torch.randn(len(x), k, mu.shape[1], device=mu.device) * torch.exp(0.5 * logvar).unsqueeze(1)
    z = z.flatten(0, 1)  # row i * k + j
    owner = torch.arange(len(x), device=x.device).repeat_interleave(k)
    log_ratio = gaussian_log_prob(z, mu[owner], logvar[owner]) - prior.log_prob(z).float()
    return decoded_log_px(nll, owner, z, decode_batch).view(len(x), k), log_ratio.view(len(x), k)


def decoded_log_px(nll: Callable[[Tensor, Tensor], Tensor], owner: Tensor, z: Tensor, decode_batch: int) -> Tensor:
    """log p(x[owner[i]] | z[i]) for each row i of latents `z` (`nll(owner, z)` as in `importance_terms`),
    decoding `decode_batch` rows at a time."""
    return -torch.cat(
        [
            nll(owner[first : first + decode_batch], z[first : first + decode_batch])
            for first in range(0, len(z), decode_batch)
        ]
    )


def iw_bound(log_px: Tensor, log_ratio: Tensor) -> Tensor:
    """The importance-weighted bound on log p(x) per image from the (B, k) terms of `importance_terms`:
    log of the mean over the k samples of p(x|z_j) p(z_j) / q(z_j|x)."""
    return torch.logsumexp(log_px - log_ratio, dim=1) - math.log(log_px.shape[1])
