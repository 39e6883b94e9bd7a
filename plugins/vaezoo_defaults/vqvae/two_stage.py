"""The two-stage VQ-VAE (van den Oord et al. 2017, section 4.2): a gated PixelCNN (van den Oord et al.
2016) trained as the prior over the codes of a trained, frozen VQ-VAE, the model file named by the
recipe key `stage1`.

vaezoo reads the stage-1 file once, when training starts, and passes the loaded model as `stage1`; it
is kept here as a frozen submodule, so its weights are saved in this model's file, which is then
self-contained (vaezoo records the stage-1 file's metadata in it and rebuilds the stage-1 model from
them when this file is loaded, without reading the stage-1 file again).

The posterior is a point mass on the stage-1 encoder's codes, so the negative ELBO is
-log p(x | codes) - log p(codes): the stage-1 decoder's likelihood of the image plus this prior's NLL
of its codes, in nats per image (bits/dim follow from it). Only the prior trains."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vaezoo import LossParts, Model
from vaezoo.components import ParamGroup
from vaezoo_defaults.common import MAX_LAYERS, MAX_WIDTH, check_int
from vaezoo_defaults.vqvae.model import MAX_PIXELCNN_GRID, VQVAE
from vaezoo_defaults.vqvae.prior import PixelCNNCodePrior


class VQPixelCNN(Model):
    """Stage 2 of a VQ-VAE: a gated PixelCNN prior over the code grid of the frozen VQ-VAE `stage1`."""

    model_files = ("stage1",)
    cuda_graph = True  # the forward reads nothing back to the host and is the same at every step

    def __init__(self, *, stage1: Model, in_shape: Sequence[int], channels: int = 128, layers: int = 12) -> None:
        super().__init__()
        if not isinstance(stage1, VQVAE):
            raise ValueError(f"vqvae-pixelcnn's stage1 must be a vqvae model file, got a {type(stage1).__name__}")
        if tuple(in_shape) != tuple(stage1.in_shape):
            raise ValueError(
                f"vqvae-pixelcnn: the stage-1 model was trained on images of shape {tuple(stage1.in_shape)}, "
                f"this recipe's dataset gives {tuple(in_shape)}"
            )
        check_int("vqvae-pixelcnn", "channels", channels, 1, MAX_WIDTH)
        check_int("vqvae-pixelcnn", "layers", layers, 1, MAX_LAYERS)
        grid = tuple(stage1.grid)
        if grid[0] * grid[1] > MAX_PIXELCNN_GRID:
            raise ValueError(f"vqvae-pixelcnn samples one code position at a time: at most {MAX_PIXELCNN_GRID}")
        self.stage1 = stage1.requires_grad_(False).eval()
        self.discrete = stage1.discrete
        self.prior = PixelCNNCodePrior(
            codes=stage1.codebook_vectors.shape[0], grid=grid, channels=channels, layers=layers
        )

    def train(self, mode: bool = True) -> VQPixelCNN:
        """Training mode for the prior; the stage-1 model stays frozen in evaluation mode."""
        super().train(mode)
        self.stage1.eval()
        return self

    def parameter_groups(self) -> dict[str, ParamGroup]:
        """One optimizer, over the prior alone (the stage-1 model is frozen)."""
        return {"model": ParamGroup(list(self.prior.parameters()))}

    def forward(self, x: Tensor, y: Tensor | None = None, step: int | None = None) -> LossParts:
        """recon = -log p(x | codes) by the stage-1 decoder, kl = -log p(codes) under this prior."""
        with torch.no_grad():
            codes = self.stage1.code_indices(x)
            recon = self.stage1.code_nll(x, codes)
        kl = -self.prior.log_prob(codes)
        return LossParts(recon + kl, recon, kl)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`n` images: code grids drawn from the prior (logits divided by `temperature`), decoded by stage 1."""
        return self.stage1.decode_indices(self.prior.sample(n, self.stage1.codebook_vectors.device, temperature))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.stage1.reconstruct(x)
