"""The VQ-VAE family (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a conv
encoder maps an image to a grid of vectors, each replaced by its nearest code of a learned codebook
(straight-through gradients), and a conv decoder gives the parameters of the recipe's likelihood.

The codebook learns by exponential moving averages (with Laplace smoothing) and the encoder is held
near its codes by the commitment loss; codes unused for `restart_after` training steps restart at
encoder outputs of the current batch. The prior over the code grid is uniform or a small gated
PixelCNN fitted alongside the autoencoder on the (detached) code indices.

The posterior is a point mass on the chosen codes, so KL(q || p) = -log p(codes) and the negative
ELBO is -log p(x | codes) - log p(codes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaezoo import Loss, LossParts, Model
from vaezoo_defaults.common import MAX_LAYERS, MAX_WIDTH, check_int, downsampling_factor
from vaezoo_defaults.vqvae.codebook import EMACodebook
from vaezoo_defaults.vqvae.prior import PixelCNNCodePrior, UniformCodePrior

CODE_PRIORS = ("pixelcnn", "uniform")
MAX_PIXELCNN_GRID = 32 * 32  # code positions of the pixelcnn prior: sampling runs it once per position


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), as in the VQ-VAE paper."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 2)
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, inner, 3, padding=1), nn.ReLU(), nn.Conv2d(inner, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def make_encoder(in_channels: int, hidden: int, levels: int, res_blocks: int, dim: int) -> nn.Sequential:
    """`levels` stride-2 4x4 convolutions, a 3x3 convolution, residual blocks, then 1x1 to `dim`."""
    layers: list[nn.Module] = []
    channels = in_channels
    for level in range(levels):
        width = hidden if level == levels - 1 else max(1, hidden // 2)
        layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
        channels = width
    layers.append(nn.Conv2d(channels, hidden, 3, padding=1))
    layers += [ResBlock(hidden) for _ in range(res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(hidden, dim, 1)]
    return nn.Sequential(*layers)


def make_decoder(dim: int, hidden: int, levels: int, res_blocks: int, out_channels: int) -> nn.Sequential:
    """A 3x3 convolution from `dim`, residual blocks, then `levels` stride-2 4x4 transposed convolutions,
    the last one to `out_channels`."""
    layers: list[nn.Module] = [nn.Conv2d(dim, hidden, 3, padding=1)]
    layers += [ResBlock(hidden) for _ in range(res_blocks)]
    layers.append(nn.ReLU())
    channels = hidden
    for level in range(levels):
        last = level == levels - 1
        width = out_channels if last else max(1, hidden // 2)
        layers.append(nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
        channels = width
    return nn.Sequential(*layers)


class VQVAE(Model):
    """VQ-VAE: conv encoder -> nearest of `codebook_size` codes of `latent_dim` values at each of
    (H / 2**levels) x (W / 2**levels) positions -> conv decoder -> the recipe's likelihood `loss`;
    EMA codebook with dead-code restarts; a uniform or PixelCNN prior over the codes (`code_prior`).

    The training step may be captured as a CUDA graph: the forward (quantisation, the codebook's EMA and
    restart step, the prior's and the likelihood's NLL, the terms) never reads a value back to the host,
    keeps no Python state and is the same at every training step."""

    cuda_graph = True

    def __init__(
        self,
        *,
        loss: Loss,
        in_shape: Sequence[int],
        latent_dim: int = 64,
        codebook_size: int = 512,
        hidden: int = 128,
        res_blocks: int = 2,
        levels: int = 2,
        commitment: float = 5.0,
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        restart_after: int = 10,
        code_prior: str = "pixelcnn",
        prior_channels: int = 64,
        prior_layers: int = 5,
    ) -> None:
        super().__init__()
        if code_prior not in CODE_PRIORS:
            raise ValueError(f"vqvae code_prior must be one of {', '.join(CODE_PRIORS)}, got {code_prior!r}")
        for key, value, low, high in (
            ("hidden", hidden, 1, MAX_WIDTH),
            ("res_blocks", res_blocks, 0, MAX_LAYERS),
            ("latent_dim", latent_dim, 1, MAX_WIDTH),
            ("codebook_size", codebook_size, 2, MAX_WIDTH),
            ("prior_channels", prior_channels, 1, MAX_WIDTH),
            ("prior_layers", prior_layers, 1, MAX_LAYERS),
        ):
            check_int("vqvae", key, value, low, high)
        if not commitment >= 0:
            raise ValueError(f"vqvae needs commitment >= 0, got {commitment}")
        factor = downsampling_factor("vqvae", in_shape, levels)
        grid = (in_shape[1] // factor) * (in_shape[2] // factor)
        if code_prior == "pixelcnn" and grid > MAX_PIXELCNN_GRID:
            raise ValueError(
                f"vqvae's pixelcnn code prior samples one of the {grid} code positions at a time: at most "
                f"{MAX_PIXELCNN_GRID} (32 x 32) positions, "
                f'so use more levels or code_prior = "uniform" for {in_shape[1]} x {in_shape[2]} images'
            )
        self.in_shape = tuple(in_shape)
        self.grid = (in_shape[1] // factor, in_shape[2] // factor)
        self.latent_dim, self.commitment = latent_dim, float(commitment)
        self.loss = loss
        self.discrete = bool(getattr(loss, "discrete", False))
        self.encoder = make_encoder(in_shape[0], hidden, levels, res_blocks, latent_dim)
        self.codebook = EMACodebook(
            codes=codebook_size, dim=latent_dim, decay=ema_decay, eps=ema_eps, restart_after=restart_after
        )
        self.decoder = make_decoder(latent_dim, hidden, levels, res_blocks, in_shape[0] * loss.params_per_channel)
        if code_prior == "pixelcnn":
            self.prior: nn.Module = PixelCNNCodePrior(
                codes=codebook_size, grid=self.grid, channels=prior_channels, layers=prior_layers
            )
        else:
            self.prior = UniformCodePrior(codes=codebook_size, grid=self.grid)

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder outputs `(B, D, h, w)`, their code indices `(B, h, w)` and the chosen codes
        `(B, D, h, w)` (codebook rows, float32)."""
        z_e = self.encoder(2 * x - 1)
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, self.latent_dim)
        index = self.codebook.nearest(flat)
        z_q = self.codebook.embedding[index].view(z_e.shape[0], *self.grid, self.latent_dim).permute(0, 3, 1, 2)
        return z_e, index.view(z_e.shape[0], *self.grid), z_q

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """recon = -log p(x | codes), kl = -log p(codes) under the code prior: the negative ELBO (the
        posterior is a point mass). In training (`step` given) the loss adds the commitment loss
        times `commitment`, and the codebook takes one EMA / restart step."""
        z_e, codes, z_q = self.quantize(x)
        z_st = z_e + (z_q - z_e).detach()  # straight-through: the decoder's gradient goes to the encoder
        recon = self.loss.nll(x.float(), self.decoder(z_st).float())
        kl = -self.prior.log_prob(codes)  # codes carry no gradient: the prior fits on its own
        commitment = (z_e.float() - z_q).pow(2).flatten(1).sum(1)
        size = z_e.detach().float().pow(2).flatten(1).sum(1)
        counts = self.codebook.counts(codes.flatten())
        probs = counts / counts.sum()
        entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
        batch = x.shape[0]
        terms = {
            "perplexity": entropy.exp().expand(batch),
            "codes_used": (counts > 0).sum().float().expand(batch),
            "commitment": commitment.detach(),
            # the same relative to the encoder outputs' size: their scale drifts up in training and the codes
            # follow it, so the commitment grows with the scale squared; this tells a coarser quantisation
            # from that growth (docs/results.md, "The growing commitment term")
            "relative_commitment": commitment.detach() / size.clamp(min=1e-12),
        }
        if step is None or not self.training:
            return LossParts(recon + kl, recon, kl, terms)
        self.codebook.update(z_e.permute(0, 2, 3, 1).reshape(-1, self.latent_dim), codes.flatten(), counts)
        return LossParts(recon + kl + self.commitment * commitment, recon, kl, terms)

    # the code API: what a second stage (a prior fitted over the codes, e.g. vqvae-pixelcnn) reads
    @property
    def codebook_vectors(self) -> Tensor:
        """The codebook, `(codebook_size, latent_dim)` float32: row k is code k."""
        return self.codebook.embedding

    @torch.no_grad()
    def code_indices(self, x: Tensor) -> Tensor:
        """`(B, h, w)` int64: the index of the code chosen at each position of the code grid of images `x`."""
        return self.quantize(x)[1]

    @torch.no_grad()
    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images in [0, 1] decoded from `(B, h, w)` code indices."""
        return self.decode(self.codebook.embedding[indices].permute(0, 3, 1, 2))

    def code_nll(self, x: Tensor, indices: Tensor) -> Tensor:
        """`(B,)` -log p(x | codes) in nats: the likelihood of images `x` given their code indices."""
        return self.loss.nll(x.float(), self.decoder(self.codebook.embedding[indices].permute(0, 3, 1, 2)).float())

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`n` images decoded from code grids drawn from the prior (its logits divided by `temperature`)."""
        return self.decode_indices(self.prior.sample(n, self.codebook.embedding.device, temperature))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The chosen codes of `x` as vectors `(B, latent_dim, h, w)`; `decode` takes any vectors,
        so interpolations decode blends of two images' codes without quantising them again."""
        return self.quantize(x)[2]

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.loss.mean_image(self.decoder(z)).clamp(0, 1)
