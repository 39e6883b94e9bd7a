"""`vaezoo eval --fid`: FID and KID of model samples through torch-fidelity. The plumbing end to end
with a small fixed random feature network on the session's tiny trained model and real CIFAR-10 test
images, checked against an independent Fréchet distance; the Inception weights file: fetched, refused
when it is not tensors or not Inception's, one line offline (no real Inception weights here)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import Command, run_cli_batch
from torch import nn

pytest.importorskip("torch_fidelity")
from torch_fidelity.feature_extractor_base import FeatureExtractorBase  # noqa: E402
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3  # noqa: E402

from vaezoo.api import evaluate_file, load_split_images  # noqa: E402
from vaezoo.errors import VaezooError  # noqa: E402
from vaezoo.loading import load  # noqa: E402
from vaezoo.sharing.fid_weights import WEIGHTS_FILE  # noqa: E402
from vaezoo.trainer.sample_quality import as_rgb_uint8, compare_images  # noqa: E402
from vaezoo.trainer.sampling import sample_images  # noqa: E402

SAMPLES, IMAGES, SEED = 160, 200, 3


class SmallFeatures(FeatureExtractorBase):
    """A fixed random conv network (the same weights in every process): 24 features per uint8 image."""

    def __init__(self, name: str, features_list: list[str], **kwargs: object) -> None:
        super().__init__(name, features_list)
        generator = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2), nn.Tanh(), nn.Conv2d(12, 24, 3, stride=2), nn.Tanh())
        for parameter in self.net.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.5
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return (self.net(x.float() / 255).mean(dim=(2, 3)),)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), by eigendecompositions of
    symmetric matrices (not torch-fidelity's eigenvalues of S_a S_b)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(cross.clip(min=0)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def features(images: torch.Tensor) -> np.ndarray:
    """SmallFeatures of images in [0, 1] or uint8, quantised and made RGB here, independently of vaezoo."""
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        return SmallFeatures("check", ["features"])(images.expand(-1, 3, -1, -1))[0].numpy()


@pytest.fixture(scope="module")
def test_images(small_model: Path, cifar: Path) -> torch.Tensor:
    return load_split_images(load(small_model, device="cpu"), "test", cifar, IMAGES)[0]


def test_fid_of_model_samples_matches_an_independent_frechet_distance(
    small_model: Path, cifar: Path, test_images: torch.Tensor
) -> None:
    seen: dict[str, int] = {}
    result = evaluate_file(
        small_model,
        data_dir=cifar,
        limit=IMAGES,
        device="cpu",
        seed=SEED,
        fid=True,
        fid_samples=SAMPLES,
        feature_extractor=SmallFeatures,
        progress=lambda what, done, total: seen.__setitem__(what, total),
    )
    samples = sample_images(load(small_model, device="cpu"), SAMPLES, seed=SEED)  # what `vaezoo sample` draws
    expected = frechet_distance(features(samples), features(test_images))
    assert result["fid"] == pytest.approx(expected, rel=1e-3)
    assert result["fid"] > 0.01 and result["fid_samples"] == SAMPLES and result["images"] == IMAGES
    assert result["kid_std"] >= 0 and np.isfinite(result["kid_mean"])
    fid_stages = {"sampling": SAMPLES, "features of the samples": SAMPLES, "features of the real images": IMAGES}
    assert seen == {"loss": IMAGES, "reconstructions": IMAGES, **fid_stages}  # each stage of eval, then FID's
    again = evaluate_file(
        small_model, data_dir=cifar, limit=IMAGES, device="cpu", seed=SEED + 1, fid=True, fid_samples=SAMPLES,
        feature_extractor=SmallFeatures,
    )  # fmt: skip
    assert again["fid"] != result["fid"]  # other samples under another seed
    assert evaluate_file(small_model, data_dir=cifar, limit=IMAGES, device="cpu")["fid"] is None  # no --fid


def test_fid_is_zero_for_the_same_images_and_large_for_noise(test_images: torch.Tensor) -> None:
    same = compare_images(test_images, test_images, feature_extractor=SmallFeatures)
    noise = torch.randint(0, 256, test_images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    other = compare_images(test_images[:100], test_images[100:], feature_extractor=SmallFeatures)
    far = compare_images(noise, test_images, feature_extractor=SmallFeatures)
    assert abs(same["fid"]) < 1e-6 * far["fid"]
    assert abs(same["kid_mean"]) < 0.05 * far["kid_mean"]  # unbiased KID of a set with itself: about 0
    assert far["fid"] > 4 * other["fid"] > 0  # noise is far; two halves of the test split are close
    assert far["fid"] == pytest.approx(frechet_distance(features(noise), features(test_images)), rel=1e-3)


FAMILIES = ["cifar-wae", "cifar-rae", "cifar-aae", "cifar-vae-gan", "cifar-cvae", "cifar-vqvae"]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_every_family_and_grayscale_data_get_a_fid(cifar: Path) -> None:
    """The families without a likelihood (and the conditional one, drawing its classes in turn) and a
    grayscale dataset, untrained: FID and KID through `sample`, which every family has."""
    from vaezoo.api import build, make_dataset
    from vaezoo.data import limit_subset, load_split
    from vaezoo.recipes.resolve import resolve_recipe
    from vaezoo.trainer.sample_quality import sample_quality

    recipes = FAMILIES + (["fashion-vae"] if FASHION.is_dir() else [])
    for recipe in recipes:
        model = build(recipe).eval()
        images = limit_subset(*load_split(make_dataset(resolve_recipe(recipe), cifar), "test"), 16)[0]
        result = sample_quality(model, images, samples=8, feature_extractor=SmallFeatures)
        assert result["fid"] > 0 and result["kid_std"] >= 0 and result["fid_samples"] == 8, recipe


def test_grayscale_is_repeated_and_other_channel_counts_are_refused() -> None:
    gray = torch.rand(4, 1, 28, 28)
    rgb = as_rgb_uint8(gray)
    assert rgb.shape == (4, 3, 28, 28) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, 1], (gray[:, 0] * 255).round().to(torch.uint8))
    with pytest.raises(VaezooError, match="1 .grayscale. or 3 .RGB. channels"):
        as_rgb_uint8(torch.rand(4, 2, 8, 8))


def random_inception_weights(path: Path, tmp_path: Path) -> Path:
    """A state dict of torch-fidelity's Inception-v3 with random weights (the real file cannot be had here)."""
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        network = FeatureExtractorInceptionV3("random", ["2048"], feature_extractor_weights_path=str(empty))
    torch.save(network.state_dict(), path)
    return path


class Unpickled:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_eval_fid_weights_in_a_fresh_process(small_model: Path, cifar: Path, tmp_path: Path) -> None:
    model, data = str(small_model), ["--data-dir", str(cifar)]
    marker = tmp_path / "code-ran"
    torch.save({"weights": Unpickled(marker)}, tmp_path / "code.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    wrong_cache = tmp_path / "wrong-cache"
    (wrong_cache / "fid").mkdir(parents=True)
    (wrong_cache / "fid" / WEIGHTS_FILE).write_bytes(b"not the weights")
    weights = random_inception_weights(tmp_path / "random-inception.pth", tmp_path)
    unreachable = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # offline, anywhere
    empty_cache = tmp_path / "cache"
    fid = ["eval", model, *data, "--fid", "--limit", "8"]
    results = run_cli_batch(
        [
            Command(*fid, env={"VAEZOO_CACHE_DIR": str(empty_cache), **unreachable}),
            Command(*fid, env={"VAEZOO_CACHE_DIR": str(empty_cache), "HF_HUB_OFFLINE": "1"}),
            Command(*fid, env={"VAEZOO_FID_WEIGHTS": str(tmp_path / "code.pth")}),
            Command(*fid, env={"VAEZOO_FID_WEIGHTS": str(tmp_path / "other.pth")}),
            Command(*fid, env={"VAEZOO_FID_WEIGHTS": str(tmp_path / "missing.pth")}),
            Command(*fid, env={"VAEZOO_CACHE_DIR": str(wrong_cache)}),
            Command(*fid, "--fid-samples", "-1"),
            Command(*fid, "--fid-samples", "6", "--json", env={"VAEZOO_FID_WEIGHTS": str(weights)}),
            Command(*fid, "--fid-samples", "6", env={"VAEZOO_FID_WEIGHTS": str(weights)}),
            Command("eval", model, *data, "--limit", "8", "--json"),
        ],
        tmp_path,
    )
    offline, forbidden, code, other, missing, wrong, negative, as_json, table, plain = results
    for refused in (offline, forbidden, code, other, missing, wrong, negative):
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr
    for refused in (offline, forbidden, code, other, missing, wrong):
        assert refused.stderr.startswith("vaezoo: error: ") and refused.stderr.count("\n") == 1, refused.stderr
    target = empty_cache / "fid" / WEIGHTS_FILE
    for line in (offline.stderr, forbidden.stderr):  # where to get the file and where to put it
        assert URL_INCEPTION_V3 in line and f"put it at {target} " in line and "VAEZOO_FID_WEIGHTS" in line
    assert "HF_HUB_OFFLINE" in forbidden.stderr
    assert not (empty_cache / "fid").exists() or not any((empty_cache / "fid").iterdir())  # nothing half-written
    assert "never unpickles" in code.stderr and not marker.exists()
    assert "does not hold the Inception-v3 weights" in other.stderr
    assert "no such file" in missing.stderr
    assert "sha256 does not start with 6726825d" in wrong.stderr and "delete it" in wrong.stderr
    assert as_json.returncode == 0, as_json.stderr
    metrics = json.loads(as_json.stdout)  # the whole Inception path, with random weights
    assert metrics["fid_samples"] == 6 and metrics["fid"] > 0 and metrics["kid_std"] >= 0
    assert table.returncode == 0 and "kid_mean" in table.stdout and "fid " in table.stdout
    assert plain.returncode == 0
    quiet = json.loads(plain.stdout)
    assert all(quiet[key] is None for key in ("fid", "kid_mean", "kid_std", "fid_samples"))


def test_a_downloaded_file_that_is_not_the_weights_is_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download itself (a local server stands in for GitHub): a file whose sha256 is not the
    published one is not kept, and the error is one line naming the URL and where to put the file."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from vaezoo.sharing import fid_weights

    served = tmp_path / "served"
    served.mkdir()
    (served / WEIGHTS_FILE).write_bytes(b"x" * 1000)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{WEIGHTS_FILE}"
    monkeypatch.setattr(fid_weights, "weights_url", lambda: url)
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("VAEZOO_FID_WEIGHTS", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(key, raising=False)
    try:
        with pytest.raises(VaezooError) as refused:
            fid_weights.inception_weights()
    finally:
        server.shutdown()
    message = str(refused.value)
    assert "sha256 does not start with 6726825d" in message and url in message and "\n" not in message
    assert f"put it at {tmp_path / 'cache' / 'fid' / WEIGHTS_FILE} " in message
    assert not (tmp_path / "cache" / "fid" / WEIGHTS_FILE).exists()


def test_without_torch_fidelity_fid_is_one_line_naming_the_extra(
    small_model: Path, cifar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if it were not installed
    with pytest.raises(VaezooError, match=r"needs the torch-fidelity package: pip install 'vaezoo\[fid\]'"):
        evaluate_file(small_model, data_dir=cifar, limit=8, device="cpu", fid=True)
