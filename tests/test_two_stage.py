"""Models built on models: the vqvae code API, and cifar-vqvae-pixelcnn, whose family is built on a
cifar-vqvae model file (model.stage1) read once when training starts. Its own file is self-contained:
with the stage-1 file gone it samples (the same images for the same seed), evaluates, resumes and
says what it is built on; a damaged record of the stage-1 file is one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli_batch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vaezoo

STAGE1 = [
    "model.hidden=16",
    "model.codebook_size=32",
    "latent_dim=8",
    "model.prior_channels=4",
    "model.prior_layers=1",
    "train.sample_count=4",
    "train.test_limit=64",
]
STAGE2 = ["model.channels=16", "model.layers=3", "train.sample_count=4", "train.test_limit=64"]


@pytest.fixture(scope="module")
def stages(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny cifar-vqvae run and a cifar-vqvae-pixelcnn run built on its model file."""
    root = tmp_path_factory.mktemp("two-stage")
    options = {"train.epochs": 1, "train.limit": 256}
    vaezoo.fit("cifar-vqvae", sets=STAGE1, options=options, out=root / "vq", data_dir=cifar, device="cpu")
    stage1 = str(root / "vq" / "model.safetensors")
    sets = [*STAGE2, f"model.stage1={stage1}"]
    vaezoo.fit("cifar-vqvae-pixelcnn", sets=sets, options=options, out=root / "pixelcnn", data_dir=cifar, device="cpu")
    return root / "vq", root / "pixelcnn"


def test_vqvae_code_api(stages: tuple[Path, Path], cifar: Path):
    from vaezoo.api import load_split_images
    from vaezoo.data import to_float

    model = vaezoo.load(stages[0] / "model.safetensors")
    x = to_float(load_split_images(model, "test", cifar, 8)[0])
    indices = model.code_indices(x)
    assert indices.shape == (8, *model.grid) and indices.dtype == torch.int64
    assert model.codebook_vectors.shape == (32, 8)
    assert int(indices.max()) < 32
    from vaezoo.testing import check_model
    from vaezoo_defaults.vqvae.two_stage import VQPixelCNN

    check_model(VQPixelCNN, in_shape=(3, 32, 32), stage1=model, channels=8, layers=2)  # a model file passed in
    with torch.no_grad():
        parts = model(x)  # the negative ELBO's recon is the likelihood given the chosen codes
        assert torch.allclose(model.code_nll(x, indices), parts.recon, rtol=1e-5)
        assert torch.allclose(model.decode_indices(indices), model.reconstruct(x))


def test_the_two_stage_file_samples_evaluates_and_resumes_without_the_stage1_file(
    stages: tuple[Path, Path], cifar: Path, tmp_path: Path
):
    stage1, stage2 = stages
    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(stage2 / "model.safetensors", alone)
    run = tmp_path / "run"
    shutil.copytree(stage2, run)
    hidden = stage1.with_name("hidden")
    stage1.rename(hidden)  # the stage-1 file is gone from where the recipe named it
    try:
        a, b, c = (str(tmp_path / f"{name}.png") for name in "abc")
        results = run_cli_batch(
            [
                ["sample", str(alone), "-n", "4", "--seed", "5", "--out", a],
                ["sample", str(alone), "-n", "4", "--seed", "5", "--out", b],
                ["sample", str(alone), "-n", "4", "--seed", "6", "--out", c],
                ["eval", str(alone), "--limit", "64", "--json", "--data-dir", str(cifar)],
                ["inspect", str(alone), "--json"],
                ["inspect", str(alone)],
                ["run", "cifar-vqvae-pixelcnn", "--resume", str(run), "--epochs", "2", "--data-dir", str(cifar)],
            ],
            tmp_path,
        )
    finally:
        hidden.rename(stage1)
    for result in results:
        assert result.returncode == 0, result.stderr
    assert Path(a).read_bytes() == Path(b).read_bytes() != Path(c).read_bytes()
    report = json.loads(results[3].stdout)
    assert report["bits_per_dim"] > 0 and report["loss"] == pytest.approx(report["recon"] + report["kl"])
    built_on = json.loads(results[4].stdout)["dependencies"]["stage1"]
    assert built_on["source"] == str(stage1 / "model.safetensors") and built_on["model"] == "vqvae"
    assert "built on model.stage1" in results[5].stdout.replace("\n", " ")
    assert [line["epoch"] for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    # the stage-1 weights are this file's own, and training left them as they were
    frozen = load_file(stage1 / "model.safetensors")
    trained = load_file(run / "model.safetensors")
    assert all(torch.equal(trained[f"stage1.{name}"], tensor) for name, tensor in frozen.items())


def nested(record: dict, depth: int) -> dict:
    """`record` built on itself `depth` times over."""
    for _ in range(depth):
        record = {**record, "metadata": {**record["metadata"], "dependencies": {"a": copy.deepcopy(record)}}}
    return record


def test_a_missing_or_wrong_stage1_and_a_damaged_record_are_one_line(stages: tuple[Path, Path], tmp_path: Path):
    stage1, stage2 = stages
    with safe_open(str(stage2 / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(stage2 / "model.safetensors")
    damaged = {}
    for name, change in (
        ("sha", lambda record: record["stage1"].update(sha256="x")),
        ("nested", lambda record: record["stage1"]["metadata"].update(data={"shape": [3, 32]})),
        ("deep", lambda record: record.update(stage1=nested(record["stage1"], 5))),
    ):
        record = json.loads(metadata["vaezoo.dependencies"])
        change(record)
        damaged[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(damaged[name]), metadata={**metadata, "vaezoo.dependencies": json.dumps(record)})
    # a stage-1 file (family vqvae, built on nothing) that records one: never built (the red team's 3 GB case)
    with safe_open(str(stage1 / "model.safetensors"), "pt") as handle:
        plain = handle.metadata()
    damaged["foreign"] = tmp_path / "foreign.safetensors"
    record = {"base": json.loads(metadata["vaezoo.dependencies"])["stage1"]}
    save_file(
        load_file(stage1 / "model.safetensors"),
        str(damaged["foreign"]),
        metadata={**plain, "vaezoo.dependencies": json.dumps(record)},
    )
    results = run_cli_batch(
        [
            ["run", "cifar-vqvae-pixelcnn", "--limit", "64", "--out", str(tmp_path / "none")],
            ["run", "cifar-vqvae-pixelcnn", "--set", "model.stage1=nothere.safetensors", "--out", str(tmp_path / "x")],
            *(["sample", str(path), "--out", str(tmp_path / "s.png")] for path in damaged.values()),
        ],
        tmp_path,
    )
    expected = [
        "model.stage1 names no model file",
        "nothere.safetensors does not exist",
        "sha256",
        "data.shape",
        "deep",
        "which its family does not take",
    ]
    for result, words in zip(results, expected):
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "none").exists() and not (tmp_path / "s.png").exists()


def test_a_file_records_at_most_16_model_files_in_all():
    from vaezoo.files.model_header import MAX_DEPENDENCIES, _dependency_count

    leaf = {"source": "x", "sha256": "0" * 64, "metadata": {}}
    fan = {f"k{i}": {**leaf, "metadata": {"dependencies": {f"j{j}": leaf for j in range(8)}}} for i in range(8)}
    assert _dependency_count(fan) > MAX_DEPENDENCIES  # 8 x 8: refused by the schema before anything is built
    assert _dependency_count({"a": leaf}) == 1
