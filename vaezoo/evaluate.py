"""Test-split metrics: the negative ELBO per image (nats) and its parts, the importance-weighted
(IWAE) estimate of the negative log-likelihood, bits per dimension and reconstruction error."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import gaussian_log_prob
from vaezoo.data import batches
from vaezoo.devices import Precision
from vaezoo.model import VAE


def _autocast(precision: Precision | None, device: torch.device) -> Any:
    """The precision's autocast context, or plain float32."""
    return precision.autocast(device) if precision else torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(model: VAE, images: Tensor, *, batch_size: int = 500, precision: Precision | None = None, seed: int = 0) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL per image over uint8 `images` (one posterior
    sample each, drawn from a generator seeded with `seed` so that results repeat)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for x in batches(images, batch_size):
            x = x.to(device, non_blocking=True)
            with _autocast(precision, device):
                parts = model(x)
            totals += torch.stack([parts.loss.sum(), parts.recon.sum(), parts.kl.sum()]).double()
    model.train(was_training)
    loss, recon, kl = (totals / max(1, len(images))).tolist()
    metrics: dict[str, Any] = {"loss": loss, "recon": recon, "kl": kl}
    if getattr(model.loss, "discrete", False):
        metrics["bits_per_dim"] = bits_per_dim(model, loss)
    return metrics


BITS_PER_DIM_NOTE = (
    "bits/dim is not reported: the loss {loss!r} is not a likelihood over the 256 pixel values "
    "(loss.discrete is False), so its nats are not comparable with published bits/dim"
)


def bits_per_dim(model: VAE, nats_per_image: float) -> float:
    """Nats per image -> bits per dimension (meaningful only when `model.loss.discrete`)."""
    return nats_per_image / (math.prod(model.in_shape) * math.log(2))


@torch.no_grad()
def importance_weighted_nll(
    model: VAE, images: Tensor, samples: int, *, decode_batch: int = 500, seed: int = 0, precision: Precision | None = None
) -> float:
    """Mean IWAE estimate of -log p(x) per image (nats) over uint8 `images`, with `samples` posterior
    samples each: -log mean_k p(x|z_k) p(z_k) / q(z_k|x). Each batch of images is encoded once; its
    B * samples latents are decoded `decode_batch` at a time, which bounds memory."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    per_batch = max(1, decode_batch // samples)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x in batches(images, per_batch):
            x = x.to(device, non_blocking=True)
            with _autocast(precision, device):
                mu, logvar = (t.float() for t in model.encoder(x))
            z = mu.unsqueeze(1) + torch.randn(len(x), samples, mu.shape[1], device=device) * torch.exp(0.5 * logvar).unsqueeze(1)
            z = z.flatten(0, 1)  # row b * samples + k
            owner = torch.arange(len(x), device=device).repeat_interleave(samples)
            log_w = model.prior.log_prob(z).float() - gaussian_log_prob(z, mu[owner], logvar[owner])
            for first in range(0, len(z), decode_batch):
                rows = slice(first, first + decode_batch)
                with _autocast(precision, device):
                    out = model.decoder(z[rows])
                log_w[rows] -= model.loss.nll(x[owner[rows]], out.float())
            log_w = log_w.view(len(x), samples)
            total -= (torch.logsumexp(log_w, dim=1) - math.log(samples)).double().sum()
    model.train(was_training)
    return total.item() / max(1, len(images))


@torch.no_grad()
def reconstruction_error(model: VAE, images: Tensor, *, batch_size: int = 500) -> dict[str, float]:
    """MSE per pixel and mean per-image PSNR (dB) of `mean_image(decoder(mu))` against `images` in [0, 1]."""
    device = next(model.parameters()).device
    squared, psnr = 0.0, 0.0
    for x in batches(images, batch_size):
        x = x.to(device, non_blocking=True)
        per_image = (model.reconstruct(x).float() - x).pow(2).flatten(1).mean(1).double()
        squared += per_image.sum().item()
        psnr += (-10 * torch.log10(per_image.clamp(min=1e-10))).sum().item()
    n = max(1, len(images))
    return {"recon_mse": squared / n, "psnr_db": psnr / n}


def evaluation_report(model: VAE, images: Tensor, *, iw_samples: int = 0, batch_size: int = 500, seed: int = 0) -> dict[str, Any]:
    """Everything `vaezoo eval` prints: negative ELBO and parts, the IWAE NLL when `iw_samples` > 0,
    bits/dim of each (None, with a note, unless the likelihood is discrete) and reconstruction error."""
    report: dict[str, Any] = evaluate(model, images, batch_size=batch_size, seed=seed)
    discrete = bool(getattr(model.loss, "discrete", False))
    if iw_samples:
        report["iw_samples"] = iw_samples
        report["iw_nll"] = importance_weighted_nll(model, images, iw_samples, seed=seed)
    for nats, key in (("loss", "bits_per_dim"), ("iw_nll", "iw_bits_per_dim")):
        if nats in report:
            report[key] = bits_per_dim(model, report[nats]) if discrete else None
    if not discrete:
        loss_name = getattr(model, "recipe", {}).get("loss", {}).get("name", type(model.loss).__name__)
        report["bits_per_dim_note"] = BITS_PER_DIM_NOTE.format(loss=loss_name)
    report.update(reconstruction_error(model, images, batch_size=batch_size))
    return report
