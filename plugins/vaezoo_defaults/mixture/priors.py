"""Mixture priors. The KL to the posterior has no closed form: both use the base class's one-sample
Monte Carlo estimate log q(z|x) - log p(z)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo import Prior
from vaezoo.components import gaussian_log_prob
from vaezoo_defaults.common import check_int

MAX_COMPONENTS = 10_000  # mixture components (mog) or pseudo-inputs (vamp)


def mixture_log_prob(z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor) -> Tensor:
    """log sum_k w_k N(z; mean_k, diag(exp(logvar_k))) for `z` (B, D) and K components (K, D)."""
    per_component = gaussian_log_prob(z.unsqueeze(1), means.unsqueeze(0), logvars.unsqueeze(0))  # (B, K)
    return torch.logsumexp(per_component + log_weights, dim=1)


def mixture_sample(n: int, means: Tensor, logvars: Tensor, log_weights: Tensor) -> Tensor:
    """`n` samples: a component drawn by weight, then a Gaussian sample from it."""
    k = torch.multinomial(log_weights.exp(), n, replacement=True)
    return means[k] + torch.exp(0.5 * logvars[k]) * torch.randn_like(means[k])


class MixturePrior(Prior):
    """Learnable mixture of diagonal Gaussians (means, variances and weights)."""

    def __init__(self, *, latent_dim: int, n_components: int = 10) -> None:
        super().__init__(latent_dim=latent_dim)
        check_int("mog", "n_components", n_components, 1, MAX_COMPONENTS)
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(n_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(n_components))

    def _log_weights(self) -> Tensor:
        return F.log_softmax(self.logits.float(), dim=0)

    def sample(self, n: int) -> Tensor:
        return mixture_sample(n, self.means, self.logvars, self._log_weights())

    def log_prob(self, z: Tensor) -> Tensor:
        return mixture_log_prob(z.float(), self.means.float(), self.logvars.float(), self._log_weights())


class VampPrior(Prior):
    """VampPrior: mixture of the encoder's posteriors of learned pseudo-inputs (Tomczak & Welling, 2018).

    The pseudo-inputs are `n_pseudo` images of `in_shape`, kept in [0, 1] by a sigmoid. The encoder is
    given by `bind(encoder)` and held without being registered, so it is saved once, with the model."""

    def __init__(self, *, latent_dim: int, in_shape: Sequence[int], n_pseudo: int = 100) -> None:
        super().__init__(latent_dim=latent_dim)
        check_int("vamp", "n_pseudo", n_pseudo, 1, MAX_COMPONENTS)
        self.pseudo_logits = nn.Parameter(0.5 * torch.randn(n_pseudo, *in_shape))
        self._encoder_holder: list[nn.Module] = []  # a plain list: not a submodule, not in state_dict

    def bind(self, encoder: nn.Module) -> None:
        self._encoder_holder[:] = [encoder]

    def pseudo_inputs(self) -> Tensor:
        return torch.sigmoid(self.pseudo_logits)

    def _components(self) -> tuple[Tensor, Tensor, Tensor]:
        if not self._encoder_holder:
            raise RuntimeError("vamp prior used before bind(encoder): the model must bind its encoder first")
        mu, logvar = self._encoder_holder[0](self.pseudo_inputs())
        n = mu.shape[0]
        return mu.float(), logvar.float(), torch.full((n,), -math.log(n), device=mu.device)

    def sample(self, n: int) -> Tensor:
        return mixture_sample(n, *self._components())

    def log_prob(self, z: Tensor) -> Tensor:
        return mixture_log_prob(z.float(), *self._components())
