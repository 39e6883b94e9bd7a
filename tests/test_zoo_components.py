"""The zoo's default components: resnet/mlp encoders and decoders, mog/vamp priors, beta-kl,
gaussian-kl and dlogistic-kl losses, mnist/fashion-mnist/image-folder datasets."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributions as D

import vaezoo
from vaezoo.components import gaussian_log_prob
from vaezoo.errors import DataError
from vaezoo.testing import check_dataset, check_decoder, check_encoder, check_loss, check_prior
from vaezoo_defaults.betakl.loss import BetaKL
from vaezoo_defaults.dlogistic.loss import DiscretizedLogisticKL
from vaezoo_defaults.gaussian.loss import GaussianKL
from vaezoo_defaults.imagefolder.dataset import ImageFolder
from vaezoo_defaults.mixture.priors import MixturePrior, VampPrior
from vaezoo_defaults.mlp.model import MLPDecoder, MLPEncoder
from vaezoo_defaults.mnist.dataset import MNIST, FashionMNIST
from vaezoo_defaults.resnet.model import ResNetDecoder, ResNetEncoder

FASHION = Path("/usr/share/datasets/fashion-mnist")
CIFAR_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-images"

NEW = {
    "encoder": {"resnet": "resnet", "mlp": "mlp"},
    "decoder": {"resnet": "resnet", "mlp": "mlp"},
    "prior": {"mog": "mixture-priors", "vamp": "mixture-priors"},
    "loss": {"beta-kl": "beta-kl", "gaussian-kl": "gaussian-kl", "dlogistic-kl": "dlogistic-kl"},
    "dataset": {"mnist": "mnist", "fashion-mnist": "mnist", "image-folder": "image-folder"},
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_components_are_registered_through_entry_points():
    found = {(c["kind"], c["name"]): c for c in vaezoo.list_components()}
    for kind, names in NEW.items():
        for name, plugin in names.items():
            entry = found.get((kind, name))
            assert entry is not None, f"{kind} {name!r} is not registered"
            assert entry["plugin"] == plugin and entry["summary"]


# -- encoders and decoders ---------------------------------------------------------------------


def test_resnet_encoder_and_decoder():
    check_encoder(ResNetEncoder, (3, 8, 8), latent_dim=4, hidden=[8, 16], blocks=1)
    check_decoder(ResNetDecoder, (6, 8, 8), latent_dim=4, in_shape=(3, 8, 8), hidden=[16, 8], blocks=1)
    check_encoder(ResNetEncoder, (1, 4, 4), latent_dim=2, hidden=[8], blocks=0)


def test_resnet_needs_divisible_shapes():
    with pytest.raises(ValueError, match="divisible by 8"):
        ResNetEncoder(in_shape=(3, 28, 28), latent_dim=4, hidden=(8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        ResNetDecoder(out_shape=(1, 6, 6), latent_dim=4, hidden=(8, 8))


def test_resnet_defaults_are_bigger_than_conv():
    from vaezoo_defaults.conv.model import ConvEncoder

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    resnet = ResNetEncoder(in_shape=(3, 32, 32), latent_dim=20)
    assert count(resnet) > count(ConvEncoder(in_shape=(3, 32, 32), latent_dim=20))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in resnet.modules()) > 3


def test_mlp_encoder_and_decoder():
    check_encoder(MLPEncoder, (1, 6, 5), latent_dim=3, hidden=[16, 8])
    check_decoder(MLPDecoder, (2, 6, 5), latent_dim=3, hidden=[8])
    check_encoder(MLPEncoder, (1, 4, 4), latent_dim=3, hidden=[])  # no hidden layer: linear heads only


# -- priors ------------------------------------------------------------------------------------


def test_mog_conforms_and_learns():
    prior = check_prior(MixturePrior, latent_dim=4, n_components=3)
    z = torch.randn(5, 4)
    prior.log_prob(z).sum().backward()
    assert all(p.grad is not None for p in (prior.means, prior.logvars, prior.logits))


def test_mog_with_one_standard_component_is_the_normal_prior():
    from vaezoo_defaults.normal.prior import NormalPrior

    prior = MixturePrior(latent_dim=6, n_components=1)
    with torch.no_grad():
        prior.means.zero_()
    z = torch.randn(7, 6)
    torch.testing.assert_close(prior.log_prob(z), NormalPrior(latent_dim=6).log_prob(z))


def test_mog_matches_torch_mixture():
    prior = MixturePrior(latent_dim=3, n_components=4)
    with torch.no_grad():
        prior.logvars.normal_(0, 0.5)
        prior.logits.normal_()
    reference = D.MixtureSameFamily(
        D.Categorical(logits=prior.logits),
        D.Independent(D.Normal(prior.means, torch.exp(0.5 * prior.logvars)), 1),
    )
    z = torch.randn(9, 3)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    assert prior.sample(11).shape == (11, 3)


def test_vamp_is_a_mixture_of_posteriors_of_pseudo_inputs():
    encoder = MLPEncoder(in_shape=(1, 4, 4), latent_dim=3, hidden=[8])
    prior = VampPrior(latent_dim=3, in_shape=(1, 4, 4), n_pseudo=5)
    check_prior(VampPrior, latent_dim=3, in_shape=(1, 4, 4), encoder=encoder, n_pseudo=5)
    prior.bind(encoder)
    assert list(prior.state_dict()) == ["pseudo_logits"]  # the encoder is not saved with the prior
    z = torch.randn(4, 3)
    mu, logvar = encoder(prior.pseudo_inputs())
    expected = torch.logsumexp(gaussian_log_prob(z[:, None], mu[None], logvar[None]), dim=1) - math.log(5)
    torch.testing.assert_close(prior.log_prob(z), expected)
    prior.log_prob(z).sum().backward()
    assert prior.pseudo_logits.grad is not None and encoder.mu.weight.grad is not None
    assert 0 <= prior.pseudo_inputs().min() and prior.pseudo_inputs().max() <= 1


def test_vamp_needs_bind():
    with pytest.raises(RuntimeError, match="bind"):
        VampPrior(latent_dim=2, in_shape=(1, 2, 2)).log_prob(torch.zeros(1, 2))


# -- losses ------------------------------------------------------------------------------------


def test_beta_kl_weights_and_bce():
    from vaezoo_defaults.bce.loss import BCEKL

    loss = check_loss(BetaKL, beta=4.0, warmup_steps=10)
    assert [loss.kl_weight(s) for s in (0, 5, 10, 100)] == [0.0, 2.0, 4.0, 4.0]
    assert loss.kl_weight(None) == 1.0
    assert BetaKL(beta=0.5).kl_weight(0) == 0.5
    x, out = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(loss.nll(x, out), BCEKL().nll(x, out))
    kl = torch.tensor([1.0, 2.0])

    class Fixed(vaezoo.Prior):
        def kl(self, mu, logvar, z):
            return kl

    parts = loss(x, out, torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), Fixed(latent_dim=1), step=5)
    torch.testing.assert_close(parts.loss, parts.recon + 2.0 * kl)


def test_gaussian_kl_fixed_sigma_matches_torch_normal():
    loss = check_loss(GaussianKL, sigma=0.2)
    assert loss.params_per_channel == 1 and not loss.discrete
    x, out = torch.rand(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    expected = -D.Normal(out, 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(loss.nll(x, out), expected)
    assert loss.mean_image(out).min() >= 0 and loss.mean_image(out).max() <= 1


def test_gaussian_kl_learned_variance_matches_torch_normal():
    loss = check_loss(GaussianKL, learn_variance=True)
    assert loss.params_per_channel == 2
    x, out = torch.rand(3, 2, 4, 4), torch.randn(3, 4, 4, 4)
    mean, log_sigma = out[:, :2], out[:, 2:]
    expected = -D.Normal(mean, log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(loss.nll(x, out), expected)
    torch.testing.assert_close(loss.mean_image(out), mean.clamp(0, 1))


@pytest.mark.parametrize("n_mix", [1, 3])
def test_dlogistic_probabilities_of_a_pixel_sum_to_one(n_mix):
    loss = check_loss(DiscretizedLogisticKL, n_mix=n_mix)
    assert loss.discrete and loss.params_per_channel == 3 * n_mix
    x = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)
    for scale in (-4.0, -1.0, 0.5):  # sharp, medium and broad logistics
        params = torch.randn(1, 3, n_mix, 1, 1, 1)
        params[:, 2] = scale
        out = params.flatten(1, 3).expand(256, -1, -1, -1)
        probs = torch.exp(-loss.nll(x, out))
        assert abs(float(probs.sum()) - 1.0) < 1e-4, f"log-scale {scale}: total {float(probs.sum())}"


def test_dlogistic_known_values():
    loss = DiscretizedLogisticKL(n_mix=2)
    # Two channels, 1x1: logits favour component 0; means at pixel values 0 and 255; tiny scales.
    out = torch.zeros(1, 3, 2, 2, 1, 1)
    out[0, 0, 0] = 10.0  # logits of component 0 for both channels
    out[0, 1, 0, 0], out[0, 1, 0, 1] = -1.0, 1.0  # means of component 0 on [-1, 1]
    out[0, 2] = -7.0  # log-scales
    out = out.flatten(1, 3)
    x = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    # Each channel: component 0's edge bin (-inf, -1 + 1/255] holds sigmoid((1/255) / scale) of its mass.
    p_channel = torch.sigmoid(torch.tensor(10.0)) * torch.sigmoid(torch.tensor(math.exp(7) / 255))
    torch.testing.assert_close(loss.nll(x, out), -2 * torch.log(p_channel).view(1))
    torch.testing.assert_close(loss.mean_image(out), x, atol=1e-3, rtol=0)
    # With one broad component centred at 0, the nll of a mid-grey pixel is -log P(bin).
    loss1 = DiscretizedLogisticKL(n_mix=1)
    out1 = torch.zeros(1, 3, 1, 1)  # logit 0, mean 0, log-scale 0
    x1 = torch.full((1, 1, 1, 1), 128 / 255)
    centre = 2 * 128 / 255 - 1
    p = torch.sigmoid(torch.tensor(centre + 1 / 255)) - torch.sigmoid(torch.tensor(centre - 1 / 255))
    torch.testing.assert_close(loss1.nll(x1, out1), -torch.log(p).view(1))


# -- datasets: MNIST-style IDX files -----------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _fake_mnist(raw: Path, n_train: int = 6, n_test: int = 4) -> np.ndarray:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte.gz", train)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))  # not gzipped
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)
    return train


def test_mnist_reads_torchvision_layout(tmp_path):
    train = _fake_mnist(tmp_path / "MNIST" / "raw")
    dataset = check_dataset(MNIST, tmp_path, download=False)
    images, labels = dataset.load("train")
    assert images.shape == (6, 1, 28, 28) and torch.equal(images[:, 0], torch.from_numpy(train.astype(np.uint8)))
    assert labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert str((tmp_path / "MNIST" / "raw").resolve()) in dataset.cache_key()


def test_mnist_missing_or_corrupt_is_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as missing:
        MNIST(root=tmp_path, download=False).load("train")
    assert "\n" not in str(missing.value) and str(tmp_path / "MNIST" / "raw") in str(missing.value)
    raw = tmp_path / "MNIST" / "raw"
    _fake_mnist(raw)
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        MNIST(root=tmp_path, download=False).load("test")


@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package(tmp_path):
    dataset = check_dataset(FashionMNIST, tmp_path, splits=("test",), download=False)
    assert dataset.shape == (1, 28, 28)
    images, labels = dataset.load("test")
    assert images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert 0 < images.float().mean() < 255
    assert str(FASHION) in dataset.cache_key()


# -- datasets: image folders -------------------------------------------------------------------


def _write_pngs(folder: Path, n: int, size: tuple[int, int] = (10, 14), value: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (value, i * 10, 200)).save(folder / f"{i:03d}.png")


def test_image_folder_deterministic_split(tmp_path):
    _write_pngs(tmp_path / "pics" / "cats", 6, value=10)
    _write_pngs(tmp_path / "pics" / "dogs", 4, value=20)
    dataset = check_dataset(ImageFolder, tmp_path / "elsewhere", path=str(tmp_path / "pics"), size=8, test_fraction=0.3)
    assert dataset.shape == (3, 8, 8)
    train, train_labels = dataset.load("train")
    test, test_labels = dataset.load("test")
    assert len(train) == 7 and len(test) == 3
    assert sorted(train_labels.tolist() + test_labels.tolist()) == [0] * 6 + [1] * 4
    again = ImageFolder(root=tmp_path / "pics", size=8, test_fraction=0.3).load("test")  # root fallback
    assert torch.equal(again[0], test) and torch.equal(again[1], test_labels)
    assert torch.equal(
        train[train_labels == 1][:, 0], torch.full((int((train_labels == 1).sum()), 8, 8), 20, dtype=torch.uint8)
    )


def test_image_folder_train_test_folders_and_grayscale(tmp_path):
    _write_pngs(tmp_path / "train", 5)
    _write_pngs(tmp_path / "test", 2)
    dataset = check_dataset(ImageFolder, tmp_path, size=6, grayscale=True)
    assert dataset.shape == (1, 6, 6)
    assert len(dataset.load("train")[0]) == 5 and dataset.load("test")[1].tolist() == [0, 0]


def test_image_folder_without_images_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no train images found") as error:
        ImageFolder(root=tmp_path / "missing").load("train")
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not CIFAR_IMAGES.is_dir(), reason=f"CIFAR-10 image copy not found at {CIFAR_IMAGES}")
def test_image_folder_on_a_cifar10_subset(tmp_path):
    # Links to a few real JPEGs (read in place, never copied) in the train/test class-folder layout.
    for split in ("train", "test"):
        for name in ("cat", "ship"):
            (tmp_path / split / name).mkdir(parents=True)
            for source in sorted((CIFAR_IMAGES / split / name).iterdir())[:3]:
                (tmp_path / split / name / source.name).symlink_to(source)
    dataset = check_dataset(ImageFolder, tmp_path, size=32)
    images, labels = dataset.load("test")
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.float().std() > 10  # real pictures, not blank
    small = ImageFolder(root=tmp_path, size=16).load("train")[0]
    assert small.shape == (6, 3, 16, 16)


# -- the components in recipes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "prior", "loss"),
    [("resnet", "vamp", "dlogistic-kl"), ("mlp", "mog", "gaussian-kl"), ("mlp", "vamp", "beta-kl")],
)
def test_recipes_build_train_and_reload(tmp_path, net, prior, loss):
    pytest.importorskip("vaezoo.recipes.build")
    checkpoint = pytest.importorskip("vaezoo.files.model_file")
    from vaezoo.recipes.build import build_model

    extra = {"blocks": 1} if net == "resnet" else {}
    recipe = vaezoo.resolve_recipe(
        {
            "name": "tiny",
            "latent_dim": 3,
            "dataset": {"name": "fashion-mnist"},
            "encoder": {"name": net, "hidden": [8, 8], **extra},
            "decoder": {"name": net, "hidden": [8, 8], **extra},
            "prior": {"name": prior, **({"n_pseudo": 2} if prior == "vamp" else {"n_components": 2})},
            "loss": {"name": loss, **({"learn_variance": True} if loss == "gaussian-kl" else {})},
        }
    )
    model = build_model(recipe, (1, 8, 8))
    model(torch.rand(2, 1, 8, 8), step=0).loss.sum().backward()
    assert model.sample(2).shape == (2, 1, 8, 8)
    checkpoint.save(model, tmp_path / "model.safetensors", recipe)  # vamp must not share tensors with the encoder
    again = vaezoo.load(tmp_path / "model.safetensors")
    z = torch.randn(4, 3)
    torch.testing.assert_close(again.prior.log_prob(z), model.prior.log_prob(z))
