"""Test-split metrics through the Model interface: the negative ELBO per image (nats), its parts and the
family's own terms, the importance-weighted NLL (families with `log_likelihood`), bits per dimension
(discrete likelihoods) and reconstruction error."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import Model, checked_images, checked_parts, family_name, implements
from vaezoo.data import batches
from vaezoo.errors import VaezooError
from vaezoo.trainer.devices import CHOICES, Precision, resolve_precision

IW_IMAGES_PER_BATCH = 500  # images x samples evaluated at once by the importance-weighted NLL
Progress = Callable[[str, int, int], None]  # progress(stage, images done, images in all)


def _autocast(precision: Precision | None, device: torch.device) -> Any:
    """The precision's autocast context, or plain float32."""
    return precision.autocast(device) if precision else torch.autocast(device.type, enabled=False)


def _device(model: Model) -> torch.device:
    return next(model.parameters()).device


def evaluation_precision(model: Model, name: str | None = None) -> Precision:
    """The precision `vaezoo eval` evaluates a loaded model in: `name` (fp32, bf16, fp16; one line where
    the device cannot), or by default the one the model trained in (its file's `vaezoo.training.precision`,
    the run's test_loss was computed in it) where the model's device can run it, else fp32."""
    device = _device(model)
    if name is not None:
        if name not in CHOICES:
            raise VaezooError(f"unknown precision {name!r}: use {', '.join(CHOICES)}")
        return resolve_precision(name, device)
    trained = getattr(model, "metadata", {}).get("training", {}).get("precision")
    if trained in CHOICES:
        try:
            return resolve_precision(trained, device)
        except VaezooError:  # fp16 on a CPU, bf16 on mps: float32
            pass
    return resolve_precision("fp32", device)


def _tell(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def labels_for(model: Model, labels: Tensor | None) -> Tensor | None:
    """The labels a model takes: all of them for a conditional model, none otherwise."""
    if not model.conditional:
        return None
    if labels is None:
        raise ValueError("a conditional model needs the labels of its images")
    return labels


@torch.no_grad()
def evaluate(
    model: Model,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    batch_size: int = 500,
    precision: Precision | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Means per image over uint8 `images`: `loss` (the negative ELBO), `recon`, `kl`, each of the
    model's `terms` (under "terms"), and `bits_per_dim` for a discrete model. The model's noise is
    drawn from a generator seeded with `seed`, so results repeat. `progress` hears stage "loss"."""
    device = _device(model)
    was_training = model.training
    model.eval()
    totals: dict[str, Tensor] = {}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        done = 0
        _tell(progress, "loss", done, len(images))
        for x, y in batches(images, batch_size, labels_for(model, labels)):
            x = x.to(device, non_blocking=True)
            with _autocast(precision, device):
                parts = checked_parts(model, model(x, None if y is None else y.to(device), None), len(x))
            for key, value in (
                ("loss", parts.loss),
                ("recon", parts.recon),
                ("kl", parts.kl),
                *((f"terms.{k}", v) for k, v in parts.terms.items()),
            ):
                total = value.detach().double().sum()
                totals[key] = totals[key] + total if key in totals else total
            done += len(x)
            _tell(progress, "loss", done, len(images))
    model.train(was_training)
    n = max(1, len(images))
    means = {key: value.item() / n for key, value in totals.items()}
    metrics: dict[str, Any] = {key: means.pop(key, float("nan")) for key in ("loss", "recon", "kl")}
    metrics["terms"] = {key.removeprefix("terms."): value for key, value in means.items()}
    if reports_bits(model):
        metrics["bits_per_dim"] = bits_per_dim(model, metrics["loss"])
    return metrics


def is_elbo(model: Model) -> bool:
    """Whether the model's loss at evaluation is a negative ELBO (else the family's own objective)."""
    return model.objective == "elbo"


def reports_bits(model: Model) -> bool:
    """bits/dim are meaningful for a discrete likelihood's negative ELBO only."""
    return bool(model.discrete) and is_elbo(model)


BITS_PER_DIM_NOTE = (
    "bits/dim is not reported: the likelihood of {what} is not over the 256 pixel values "
    "(model.discrete is False), so its nats are not comparable with published bits/dim"
)
OBJECTIVE_NOTE = (
    "model family {family!r} minimises its own objective ({objective}), not a negative ELBO: no likelihood or bits/dim"
)
IW_NOTE = "the importance-weighted NLL is not reported: model family {family!r} has no log_likelihood"


def bits_per_dim(model: Model, nats_per_image: float) -> float:
    """Nats per image -> bits per dimension (meaningful only when `model.discrete`)."""
    return nats_per_image / (math.prod(model.in_shape) * math.log(2))


@torch.no_grad()
def importance_weighted_nll(
    model: Model,
    images: Tensor,
    samples: int,
    labels: Tensor | None = None,
    *,
    seed: int = 0,
    precision: Precision | None = None,
    progress: Progress | None = None,
) -> float:
    """Mean -log p(x) per image (nats) over uint8 `images` by the model's `log_likelihood` with
    `samples` importance samples each (the IWAE bound for the `vae` family); batches of images are
    sized so that each holds about IW_IMAGES_PER_BATCH image-samples. `progress` hears stage
    "importance-weighted NLL"."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = _device(model)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        done = 0
        _tell(progress, "importance-weighted NLL", done, len(images))
        for x, y in batches(images, max(1, IW_IMAGES_PER_BATCH // samples), labels_for(model, labels)):
            with _autocast(precision, device):
                log_px = model.log_likelihood(
                    x.to(device, non_blocking=True), None if y is None else y.to(device), k=samples
                )
            total -= log_px.double().sum()
            done += len(x)
            _tell(progress, "importance-weighted NLL", done, len(images))
    model.train(was_training)
    return total.item() / max(1, len(images))


@torch.no_grad()
def reconstruction_error(
    model: Model,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> dict[str, float]:
    """MSE per pixel and mean per-image PSNR (dB) of `model.reconstruct(x)` against `images` in [0, 1]
    (`progress` hears stage "reconstructions")."""
    device = _device(model)
    squared, psnr, done = 0.0, 0.0, 0
    _tell(progress, "reconstructions", done, len(images))
    for x, y in batches(images, batch_size, labels_for(model, labels)):
        x = x.to(device, non_blocking=True)
        reconstructed = checked_images(
            model, "reconstruct", model.reconstruct(x, None if y is None else y.to(device)), len(x)
        )
        per_image = (reconstructed.float() - x).pow(2).flatten(1).mean(1).double()
        squared += per_image.sum().item()
        psnr += (-10 * torch.log10(per_image.clamp(min=1e-10))).sum().item()
        done += len(x)
        _tell(progress, "reconstructions", done, len(images))
    n = max(1, len(images))
    return {"recon_mse": squared / n, "psnr_db": psnr / n}


def evaluation_report(
    model: Model,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    iw_samples: int = 0,
    batch_size: int = 500,
    seed: int = 0,
    precision: Precision | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Everything `vaezoo eval` prints: the objective (the negative ELBO for an ELBO family), its parts
    (`recon` and the regularizer: `kl`, or the family's own name) and the model's terms, the
    importance-weighted NLL when `iw_samples` > 0 (None with a note for a family without
    `log_likelihood`), bits/dim of each (None, with a note, unless the model is discrete) and
    reconstruction error; `precision`: the autocast of the loss and the NLL (None: float32), named
    under "precision"; `progress` hears each stage."""
    regularizer = model.regularizer
    report: dict[str, Any] = {"objective": model.objective, "regularizer": regularizer}
    report["precision"] = precision.name if precision else "fp32"
    evaluated = evaluate(
        model, images, labels, batch_size=batch_size, seed=seed, precision=precision, progress=progress
    )
    for key, value in evaluated.items():
        report[regularizer if key == "kl" else key] = value  # a family that is not an ELBO has no KL
    discrete = reports_bits(model)
    if iw_samples:
        report["iw_samples"] = iw_samples
        if implements(model, "log_likelihood"):
            report["iw_nll"] = importance_weighted_nll(
                model, images, iw_samples, labels, seed=seed, precision=precision, progress=progress
            )
        else:
            report["iw_nll"] = None
            report["iw_note"] = IW_NOTE.format(family=family_name(model))
    for nats, key in (("loss", "bits_per_dim"), ("iw_nll", "iw_bits_per_dim")):
        if nats in report:
            report[key] = bits_per_dim(model, report[nats]) if discrete and report[nats] is not None else None
    if not is_elbo(model):
        report["bits_per_dim_note"] = OBJECTIVE_NOTE.format(family=family_name(model), objective=report["objective"])
    elif not discrete:
        recipe = model.recipe
        what = f"loss {recipe['loss']['name']!r}" if "loss" in recipe else f"model {family_name(model)!r}"
        report["bits_per_dim_note"] = BITS_PER_DIM_NOTE.format(what=what)
    report.update(reconstruction_error(model, images, labels, batch_size=batch_size, progress=progress))
    return report
