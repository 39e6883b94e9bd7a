"""vaezoo.testing catches components that break the contract, with a message that says how."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vaezoo
from vaezoo.testing import check_dataset, check_decoder, check_encoder, check_loss, check_prior, check_signature


class GoodEncoder(vaezoo.Encoder):
    def __init__(self, *, in_shape, latent_dim, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class WrongShapeEncoder(GoodEncoder):
    def forward(self, x):
        mu, logvar = super().forward(x)
        return mu[:, :1], logvar


class KwargsEncoder(GoodEncoder):
    def __init__(self, *, in_shape, latent_dim, **options) -> None:
        super().__init__(in_shape=in_shape, latent_dim=latent_dim)


class ObjectDefaultEncoder(GoodEncoder):
    def __init__(self, *, in_shape, latent_dim, act: object = nn.ReLU) -> None:
        super().__init__(in_shape=in_shape, latent_dim=latent_dim)


def test_encoder_checks():
    check_encoder(GoodEncoder, (1, 2, 2), 3, width=4)
    with pytest.raises(AssertionError, match=r"mu: expected shape \(2, 3\), got \(2, 1\)"):
        check_encoder(WrongShapeEncoder, (1, 2, 2), 3)
    with pytest.raises(AssertionError, match="recipe keys must be named"):
        check_encoder(KwargsEncoder, (1, 2, 2), 3)
    with pytest.raises(AssertionError, match="use a TOML value"):
        check_signature(ObjectDefaultEncoder)
    with pytest.raises(AssertionError, match="no recipe key 'depth'"):
        check_encoder(GoodEncoder, (1, 2, 2), 3, depth=2)


class FrozenDecoder(vaezoo.Decoder):
    def __init__(self, *, out_shape, latent_dim) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.unused = nn.Linear(1, 1)

    def forward(self, z):
        return torch.zeros(z.shape[0], *self.out_shape, requires_grad=True)


def test_decoder_without_gradient_is_caught():
    with pytest.raises(AssertionError, match="no gradient reaches its parameters"):
        check_decoder(FrozenDecoder, (1, 2, 2), 3)


class SubmodulePrior(vaezoo.Prior):
    def bind(self, encoder):
        self.encoder = encoder  # wrong: registers the encoder, which would then be saved twice

    def sample(self, n):
        return torch.randn(n, self.latent_dim)

    def log_prob(self, z):
        return -0.5 * z.pow(2).sum(-1)


def test_prior_that_registers_its_encoder_is_caught():
    with pytest.raises(AssertionError, match="registered the encoder as a submodule"):
        check_prior(SubmodulePrior, 3)


class ClaimsDiscrete(vaezoo.Loss):
    discrete = True  # but BCE is not a distribution over the 256 values

    def nll(self, x, out):
        return F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)

    def mean_image(self, out):
        return torch.sigmoid(out)


class MeanOnly(ClaimsDiscrete):
    discrete = False

    def nll(self, x, out):
        return F.binary_cross_entropy_with_logits(out, x)  # a scalar, not per image


def test_loss_checks():
    with pytest.raises(AssertionError, match="total probability"):
        check_loss(ClaimsDiscrete())
    with pytest.raises(AssertionError, match=r"nll: expected shape \(2,\)"):
        check_loss(MeanOnly())


class FloatDataset(vaezoo.Dataset):
    shape = (1, 2, 2)

    def load(self, split):
        return torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64)


def test_dataset_with_float_images_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="uint8"):
        check_dataset(FloatDataset, tmp_path)


class LearnedMeanPrior(vaezoo.Prior):
    """N(mean, I) with a learned mean (a third party's prior)."""

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__(latent_dim=latent_dim)
        self.mean = nn.Parameter(torch.zeros(latent_dim))

    def sample(self, n):
        return self.mean.detach() + torch.randn(n, self.latent_dim)

    def log_prob(self, z):
        return -0.5 * (z - self.mean).pow(2).sum(-1)


class DetachedMeanPrior(LearnedMeanPrior):
    def log_prob(self, z):
        return -0.5 * (z - self.mean.detach()).pow(2).sum(-1)  # wrong: the mean never learns


class ClosedFormIgnoresMean(LearnedMeanPrior):
    def kl(self, mu, logvar, z):  # wrong: the KL to N(0, I), whatever the learned mean
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


def test_prior_whose_parameters_get_no_gradient_is_caught():
    """A learnable prior must learn through kl and log_prob."""
    check_prior(LearnedMeanPrior, 3)
    with pytest.raises(AssertionError, match=r"DetachedMeanPrior.kl: no gradient reaches the parameter 'mean'"):
        check_prior(DetachedMeanPrior, 3)
    with pytest.raises(AssertionError, match=r"ClosedFormIgnoresMean.kl: no gradient reaches the parameter 'mean'"):
        check_prior(ClosedFormIgnoresMean, 3)


def test_the_zoo_vae_family_is_checked_with_third_party_parts_by_name():
    """check_model takes a registered family's name; vaezoo.EncoderDecoderFamily is public."""
    from vaezoo.testing import check_model, component

    loss = component("loss", "bce-kl")
    parts = {
        "encoder": GoodEncoder(in_shape=(1, 4, 4), latent_dim=3),
        "decoder": component("decoder", "mlp", in_shape=(1, 4, 4), latent_dim=3, loss=loss, hidden=[8]),
        "prior": LearnedMeanPrior(latent_dim=3),
        "loss": loss,
    }
    model = check_model("vae", (1, 4, 4), latent_dim=3, components=parts)
    assert isinstance(model, vaezoo.EncoderDecoderFamily) and model.prior is parts["prior"]


class FlatSignal(vaezoo.Dataset):
    shape = (2, 16)  # a 1-D signal is declared as (C, 1, L)

    def load(self, split):
        return torch.zeros(3, 2, 16, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)


class FileDataset(vaezoo.Dataset):
    """Reads one raw file of 2 x 1 x 8 signals; `path` names it."""

    shape = (2, 1, 8)
    path_keys = ("path",)

    def __init__(self, *, root, path: str = "signals.bin") -> None:
        super().__init__(root=root)
        self.file = Path(path)

    def load(self, split):
        data = torch.frombuffer(bytearray(self.file.read_bytes()), dtype=torch.uint8).view(-1, *self.shape)
        return data, torch.zeros(len(data), dtype=torch.int64)


def test_dataset_shape_and_path_keys_are_checked_as_vaezoo_builds_them(tmp_path, monkeypatch):
    """(C, L) is refused with the fix; a path key names a file relative to the data root."""
    with pytest.raises(AssertionError, match=r"declare a 1-D signal .* as \(C, 1, L\), here \(2, 1, 16\)"):
        check_dataset(FlatSignal, tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "signals.bin").write_bytes(bytes(range(64)))
    monkeypatch.chdir(tmp_path)  # the current folder holds no signals.bin
    dataset = check_dataset(FileDataset, tmp_path / "data", path="signals.bin")
    assert dataset.file == tmp_path / "data" / "signals.bin"
