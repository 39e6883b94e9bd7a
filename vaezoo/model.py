"""VAE = encoder + decoder + prior + loss, built from a resolved recipe and the registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vaezoo.components import LossParts
from vaezoo.errors import RecipeError
from vaezoo.recipes import component_parameters


class VAE(nn.Module):
    """A variational autoencoder whose parts come from plugins."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module, loss: nn.Module, *, in_shape: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.encoder, self.decoder, self.prior, self.loss = encoder, decoder, prior, loss
        self.in_shape = tuple(in_shape)
        self.latent_dim = latent_dim
        prior.bind(encoder)

    def forward(self, x: Tensor, step: int | None = None) -> LossParts:
        """Per-image loss parts for images `x` in [0, 1] (step None: evaluation, the true ELBO)."""
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.loss(x, self.decoder(z), mu, logvar, z, self.prior, step)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """`n` images in [0, 1] decoded from prior samples (latents scaled by `temperature`)."""
        z = self.prior.sample(n) * temperature
        return self.loss.mean_image(self.decoder(z)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images decoded from the posterior means of `x`."""
        mu, _ = self.encoder(x)
        return self.decode(mu)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.loss.mean_image(self.decoder(z)).clamp(0, 1)


def instantiate(target: Any, table: Mapping[str, Any], provided: Mapping[str, Any], what: str) -> Any:
    """Call a component constructor with the recipe keys plus the framework arguments it accepts."""
    params, var_keyword = component_parameters(target)
    kwargs = {k: v for k, v in provided.items() if k in params or var_keyword}
    kwargs.update({k: tuple(v) if isinstance(v, list) else v for k, v in table.items() if k != "name"})
    try:
        return target(**kwargs)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"cannot build {what} {table['name']!r}: {error}") from error


def build_model(recipe: Mapping[str, Any], in_shape: Sequence[int]) -> VAE:
    """The VAE a resolved recipe describes, for images of shape `in_shape`."""
    from vaezoo.plugins import get_registry

    registry = get_registry()
    latent_dim = recipe["latent_dim"]
    in_shape = tuple(in_shape)
    parts = {}
    for key, kind in (("loss", "losses"), ("encoder", "encoders"), ("prior", "priors")):
        parts[key] = instantiate(registry.get(kind, recipe[key]["name"]).load(), recipe[key], {"in_shape": in_shape, "latent_dim": latent_dim}, key)
    k = getattr(parts["loss"], "params_per_channel", 1)
    out_shape = (in_shape[0] * k, *in_shape[1:])
    parts["decoder"] = instantiate(
        registry.get("decoders", recipe["decoder"]["name"]).load(),
        recipe["decoder"],
        {"in_shape": in_shape, "out_shape": out_shape, "latent_dim": latent_dim},
        "decoder",
    )
    return VAE(parts["encoder"], parts["decoder"], parts["prior"], parts["loss"], in_shape=in_shape, latent_dim=latent_dim)
