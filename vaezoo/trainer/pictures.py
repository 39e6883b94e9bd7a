"""Pictures of a model: samples, reconstructions, latent interpolations (families with `encode` and
`decode`) and the loss curve. `vaezoo run` writes them at every epoch end (vaezoo.trainer.epoch_files);
`vaezoo sample` / `reconstruct` / `interpolate` on a saved model."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import Model, checked_images, family_name, implements
from vaezoo.data import to_float
from vaezoo.errors import VaezooError
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.png import save_grid
from vaezoo.trainer.evaluate import labels_for

RECON_COUNT = 16  # test images in the reconstructions.png of a run
RECON_COLUMNS = 8
INTERP_PAIRS = 8
INTERP_STEPS = 10
_notified: set[str] = set()


def pick(images: Tensor, n: int, seed: int = 0, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """`n` images (and their labels) drawn from uint8 `images` with a seeded generator (repeated if
    there are fewer)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    order = order.repeat(math.ceil(n / max(1, len(images))))[:n]
    return images[order.to(images.device)], None if labels is None else labels[order.to(labels.device)]


def can_interpolate(model: Model) -> bool:
    """Whether the family has latents to walk between: `encode` and `decode`."""
    return implements(model, "encode") and implements(model, "decode")


def require_interpolation(model: Model) -> None:
    """A clear error for a family that cannot interpolate."""
    if not can_interpolate(model):
        raise VaezooError(f"model family {family_name(model)!r} has no encode/decode, so it cannot interpolate")


def _model_input(model: Model, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    device = next(model.parameters()).device
    labels = labels_for(model, labels)
    return to_float(images).to(device), None if labels is None else labels.to(device)


@torch.no_grad()
def reconstructions(
    model: Model, images: Tensor, labels: Tensor | None = None, columns: int = RECON_COLUMNS
) -> tuple[Tensor, int]:
    """Uint8 `images` (top rows) above their reconstructions (bottom rows), as (tiles, columns) for
    `save_grid`; each half is filled up to whole rows with white tiles so that the halves line up."""
    x, y = _model_input(model, images, labels)
    columns = max(1, min(columns, len(x)))
    rows = math.ceil(len(x) / columns)
    blank = torch.ones(rows * columns - len(x), *x.shape[1:], device=x.device)
    reconstructed = checked_images(model, "reconstruct", model.reconstruct(x, y), len(x))
    tiles = torch.cat([x, blank, reconstructed.float(), blank])
    return tiles.cpu(), columns


@torch.no_grad()
def interpolations(
    model: Model, images: Tensor, labels: Tensor | None = None, steps: int = INTERP_STEPS
) -> tuple[Tensor, int]:
    """Decoded straight lines between the latents (`model.encode`) of image pairs `images[0::2]`,
    `images[1::2]`: one row per pair, `steps` columns (the ends are the two reconstructions). A
    conditional model decodes each row with the label of the pair's first image."""
    require_interpolation(model)
    x, y = _model_input(model, images, labels)
    latents = model.encode(x, y)
    start, end = latents[0::2], latents[1::2]
    t = torch.linspace(0, 1, steps, device=x.device).view(1, steps, *([1] * (latents.dim() - 1)))
    z = start.unsqueeze(1) + t * (end - start).unsqueeze(1)  # (pairs, steps, *latent)
    row_labels = None if y is None else y[0::2].repeat_interleave(steps)
    decoded = checked_images(model, "decode", model.decode(z.flatten(0, 1), row_labels), len(start) * steps)
    return decoded.float().cpu(), steps


def sample_labels(model: Model, n: int, label: int | None = None) -> Tensor | None:
    """The labels `model.sample` takes: None for an unconditional model, `label` for all `n`, or
    else the classes in turn (0, 1, ..., 0, 1, ...)."""
    if not model.conditional:
        return None
    device = next(model.parameters()).device
    if label is not None:
        return torch.full((n,), label, dtype=torch.int64, device=device)
    return torch.arange(n, device=device) % len(model.classes)


def sample_grid(model: Model, n: int) -> tuple[Tensor, int | None]:
    """samples.png of a run: `n` prior samples (8 a row), or for a conditional model one row per
    class, n / classes samples each."""
    if not model.conditional:
        return checked_images(model, "sample", model.sample(n), n), None
    per_class = max(1, n // len(model.classes))
    y = torch.arange(len(model.classes), device=next(model.parameters()).device).repeat_interleave(per_class)
    return checked_images(model, "sample", model.sample(len(y), y), len(y)), per_class


def save_reconstructions(
    model: Model, images: Tensor, path: str | Path, n: int = RECON_COUNT, seed: int = 0, labels: Tensor | None = None
) -> None:
    """reconstructions.png: `n` test images drawn with `seed` above their reconstructions."""
    tiles, columns = reconstructions(model, *pick(images, n, seed, labels))
    save_grid(tiles, path, nrow=columns)


def save_interpolations(
    model: Model,
    images: Tensor,
    path: str | Path,
    pairs: int = INTERP_PAIRS,
    steps: int = INTERP_STEPS,
    seed: int = 0,
    labels: Tensor | None = None,
) -> None:
    """interpolations.png: `pairs` rows of `steps` images between two test images drawn with `seed`."""
    tiles, columns = interpolations(model, *pick(images, 2 * pairs, seed, labels), steps)
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
