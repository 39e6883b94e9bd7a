"""Drawing images from a model, repeatable by seed."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vaezoo.components import Model, checked_images
from vaezoo.errors import VaezooError
from vaezoo.trainer.pictures import sample_labels

SAMPLE_BATCH = 1000  # images decoded at once (bounds memory for large -n)


def parse_label(model: Model, label: str | None) -> int | None:
    """A `--label` value (a class name or index) as a class index; one clear error for a model that is
    not conditional or a label it does not know."""
    if label is None:
        return None
    if not model.conditional:
        raise VaezooError(
            "--label needs a conditional model, and this model is not conditional (it samples without classes)"
        )
    classes = list(model.classes)
    if label in classes:
        return classes.index(label)
    if label.strip().isdigit() and int(label) < len(classes):
        return int(label)
    raise VaezooError(
        f"unknown label {label!r}: this model's classes are {', '.join(classes)} (or an index 0-{len(classes) - 1})"
    )


def sample_images(
    model: Model,
    n: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    label: int | None = None,
    codes: Callable[[int, float], Tensor] | None = None,
) -> Tensor:
    """`n` images in [0, 1] on the CPU; the same seed gives the same images on the same machine. A
    conditional model draws class `label`, or the classes in turn without one. `codes(count,
    temperature)`, when given, draws the codes that `model.decode` turns into images (a fitted
    sampler) in place of the model's own `sample`."""
    device = next(model.parameters()).device
    y = sample_labels(model, n, label)
    images = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for first in range(0, n, SAMPLE_BATCH):
            count = min(SAMPLE_BATCH, n - first)
            labels = None if y is None else y[first : first + count]
            drawn = (
                model.sample(count, labels, temperature)
                if codes is None
                else model.decode(codes(count, temperature), labels)
            )
            images.append(checked_images(model, "sample", drawn, count).cpu())
    return torch.cat(images)
