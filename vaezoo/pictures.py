"""Pictures of a model: reconstructions, latent interpolations and the loss curve. `vaezoo run` writes
them next to samples.png at every epoch end; `vaezoo reconstruct` / `interpolate` on a saved model."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.data import to_float
from vaezoo.files import write_bytes_atomic
from vaezoo.images import save_grid
from vaezoo.model import VAE

RECON_COUNT = 16  # test images in the reconstructions.png of a run
RECON_COLUMNS = 8
INTERP_PAIRS = 8
INTERP_STEPS = 10
_notified: set[str] = set()


def pick(images: Tensor, n: int, seed: int = 0) -> Tensor:
    """`n` images drawn from uint8 `images` with a seeded generator (repeated if there are fewer)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    order = order.repeat(math.ceil(n / max(1, len(images))))[:n]
    return images[order.to(images.device)]


def _model_input(model: VAE, images: Tensor) -> Tensor:
    return to_float(images).to(next(model.parameters()).device)


@torch.no_grad()
def reconstructions(model: VAE, images: Tensor, columns: int = RECON_COLUMNS) -> tuple[Tensor, int]:
    """Uint8 `images` (top rows) above their reconstructions (bottom rows), as (tiles, columns) for
    `save_grid`; each half is filled up to whole rows with white tiles so that the halves line up."""
    x = _model_input(model, images)
    columns = max(1, min(columns, len(x)))
    rows = math.ceil(len(x) / columns)
    blank = torch.ones(rows * columns - len(x), *x.shape[1:], device=x.device)
    tiles = torch.cat([x, blank, model.reconstruct(x).float(), blank])
    return tiles.cpu(), columns


@torch.no_grad()
def interpolations(model: VAE, images: Tensor, steps: int = INTERP_STEPS) -> tuple[Tensor, int]:
    """Decoded straight lines between the posterior means of image pairs `images[0::2]`,
    `images[1::2]`: one row per pair, `steps` columns (the ends are the two reconstructions)."""
    mu, _ = model.encoder(_model_input(model, images))
    start, end = mu[0::2], mu[1::2]
    t = torch.linspace(0, 1, steps, device=mu.device).view(1, steps, 1)
    z = start.unsqueeze(1) + t * (end - start).unsqueeze(1)  # (pairs, steps, latent)
    return model.decode(z.flatten(0, 1)).float().cpu(), steps


def save_reconstructions(model: VAE, images: Tensor, path: str | Path, n: int = RECON_COUNT, seed: int = 0) -> None:
    """reconstructions.png: `n` test images drawn with `seed` above their reconstructions."""
    tiles, columns = reconstructions(model, pick(images, n, seed))
    save_grid(tiles, path, nrow=columns)


def save_interpolations(model: VAE, images: Tensor, path: str | Path, pairs: int = INTERP_PAIRS, steps: int = INTERP_STEPS, seed: int = 0) -> None:
    """interpolations.png: `pairs` rows of `steps` images between two test images drawn with `seed`."""
    tiles, columns = interpolations(model, pick(images, 2 * pairs, seed), steps)
    save_grid(tiles, path, nrow=columns)


def notice(message: str) -> None:
    """A one-line notice on stderr, once per process."""
    if message not in _notified:
        _notified.add(message)
        print(f"vaezoo: notice: {message}", file=sys.stderr)


def save_loss_plot(history: Sequence[Mapping[str, Any]], path: str | Path) -> bool:
    """loss.png: train and test loss per epoch. Needs matplotlib (extra `plots`); without it, a
    one-line notice and False."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        notice("matplotlib is not installed, so loss.png is skipped: pip install 'vaezoo[plots]'")
        return False
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    axes = figure.subplots()
    epochs = [row["epoch"] for row in history]
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        axes.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("loss (nats per image)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())
    return True


def write_epoch_pictures(model: VAE, test_images: Tensor, history: Sequence[Mapping[str, Any]], out_dir: Path) -> None:
    """reconstructions.png, interpolations.png and loss.png of a run, at the end of an epoch (the
    model in eval mode, so normalization statistics are used, not updated)."""
    was_training = model.training
    model.eval()
    try:
        save_reconstructions(model, test_images, out_dir / "reconstructions.png")
        save_interpolations(model, test_images, out_dir / "interpolations.png")
    finally:
        model.train(was_training)
    save_loss_plot(history, out_dir / "loss.png")
