"""Smoke test over every registered recipe (registry.toml and plugins alike), parametrized from the
registry when the tests are collected: a new recipe is covered without writing a test.

Each recipe trains for one epoch with tiny widths on a few hundred real images through the CLI (in a fresh
process that trains every recipe in turn), writes a checkpoint, and `vaezoo sample` reloads it in another
fresh process (that samples from every recipe's checkpoint). A recipe whose
data is not on this machine (MNIST here: no network) is skipped with the reason, except that with
VAEZOO_REQUIRE_DATA=1 (CI) the data CI provides must be there."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import cifar_dir, run_cli_batch

import vaezoo
from vaezoo.errors import DataError

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it in the inner loop; .ci/run runs everything

RECIPES = sorted(entry["name"] for entry in vaezoo.list_components("recipes"))
PROVIDED_IN_CI = {"cifar10", "fashion-mnist", "image-folder"}  # .ci/run makes sure these are present

# Component keys made small (or offline) whatever the component: recipe value -> tiny value.
TINY = {
    "hidden": lambda widths: (
        [8] * len(widths) if isinstance(widths, list) else 8
    ),  # keep the number of levels, so shapes still divide
    "blocks": lambda _: 1,
    "width": lambda _: 16,
    "n_pseudo": lambda _: 4,
    "n_components": lambda _: 3,
    "n_mix": lambda _: 2,
    "download": lambda _: False,  # never try the network in a test
}


def tiny_overrides(recipe: dict) -> list[str]:
    """`--set` items shrinking every component (and the model family) of a resolved recipe that has
    one of TINY's keys (`*_hidden` counts as `hidden`)."""
    sets = []
    for part in ("model", "dataset", "encoder", "decoder", "prior", "loss"):
        for key, value in recipe.get(part, {}).items():
            rule = TINY.get("hidden" if key.endswith("hidden") else key)
            if rule is not None:
                sets.append(f"{part}.{key}={json.dumps(rule(value))}")  # JSON scalars/lists are TOML
    return sets


def write_image_folder(folder: Path) -> Path:
    """A tiny image folder: two class subfolders of 32x32 PNGs (stripes of random colours)."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(40):
            colours = torch.randint(0, 256, (4, 3), generator=generator, dtype=torch.uint8)
            pixels = colours.repeat_interleave(8, dim=0)[:, None, :].expand(32, 32, 3)
            image = pixels if label == "a" else pixels.transpose(0, 1)
            Image.fromarray(image.contiguous().numpy()).save(folder / label / f"{i:03d}.png")
    return folder


def missing_data(name: str, sets: list[str]) -> str | None:
    """Why the recipe's data cannot be loaded here (a one-line DataError), or None if it can."""
    from vaezoo.api import make_dataset
    from vaezoo.data import load_split

    try:
        load_split(make_dataset(vaezoo.resolve_recipe(name, sets)), "test")  # cached for the run below
    except DataError as error:
        return str(error)
    return None


# recipes whose family is built on another model file (Model.model_files): key -> the recipe whose
# smoke run gives that file (it sorts, and so runs, before them)
BUILT_ON = {"cifar-vqvae-pixelcnn": {"stage1": "cifar-vqvae"}}


def run_args(name: str, tmp_path_factory: pytest.TempPathFactory, root: Path) -> tuple[list[str] | None, str | None]:
    """The tiny `vaezoo run` arguments of recipe `name` (no --out; the runs go to ROOT/NAME/run), or why
    its data cannot be loaded here."""
    recipe = vaezoo.resolve_recipe(name)
    dataset = recipe["dataset"]["name"]
    sets = tiny_overrides(recipe)
    for key, stage in BUILT_ON.get(name, {}).items():
        sets.append(f"model.{key}={json.dumps(str(root / stage / 'run' / 'model.safetensors'))}")
    args = []
    if dataset == "cifar10":
        path = cifar_dir()
        if path is None:
            return None, "CIFAR-10 copy not found: set VAEZOO_DATA_DIR to ../shared/data/cifar10-images"
        args += ["--data-dir", str(path)]
    elif dataset == "image-folder" and not recipe["dataset"].get("path"):
        images = write_image_folder(tmp_path_factory.mktemp(f"{name}-images") / "images")
        sets.append(f"dataset.path={json.dumps(str(images))}")
    else:
        reason = missing_data(name, sets)
        if reason is not None:
            return None, f"data for {name} ({dataset}) not on this machine: {reason}"
    return [
        *("--epochs", "1", "--limit", "200", "--batch-size", "50", "--device", "cpu"),
        *(("--latent-dim", "4") if "latent_dim" in recipe else ()),  # a family built on a model file has none
        *("--set", "train.test_limit=100", "--set", "train.sample_count=16"),
        *[item for s in sets for item in ("--set", s)],
        *args,
    ], None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Recipe name -> (run folder, `vaezoo run`, picture, `vaezoo sample`) or (None, why not). The runs
    are one process, which runs each recipe in turn (a process starts in seconds: torch's import); the
    samples are another, fresh one, which reloads each recipe's model file."""
    root = tmp_path_factory.mktemp("smoke")
    planned, skipped = {}, {}
    for name in RECIPES:
        args, reason = run_args(name, tmp_path_factory, root)
        if args is None:
            skipped[name] = (None, reason)
        else:
            planned[name] = args
    runs = run_cli_batch(
        [["run", name, *args, "--out", str(root / name / "run")] for name, args in planned.items()], root
    )
    samples = run_cli_batch(
        [
            [
                "sample",
                str(root / name / "run" / "model.safetensors"),
                "-n",
                "8",
                "--out",
                str(root / name / "sampled.png"),
            ]
            for name in planned
        ],
        root,
    )
    return {
        **skipped,
        **{
            name: (root / name / "run", run, root / name / "sampled.png", sample)
            for name, run, sample in zip(planned, runs, samples)
        },
    }


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_saves_and_samples(name, smoke):
    out, *rest = smoke[name]
    if out is None:
        (reason,) = rest
        dataset = vaezoo.resolve_recipe(name)["dataset"]["name"]
        if dataset in PROVIDED_IN_CI and os.environ.get("VAEZOO_REQUIRE_DATA") == "1":
            pytest.fail(f"VAEZOO_REQUIRE_DATA=1 but the data of {name} is missing: {reason}")
        pytest.skip(reason)
    result, picture, sampled = rest
    assert result.returncode == 0, f"vaezoo run {name} failed:\n{result.stderr[-3000:]}"
    assert (out / "model.safetensors").is_file() and (out / "samples.png").is_file()
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["epoch"] == 1 and math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])
    assert sampled.returncode == 0, f"vaezoo sample of a {name} checkpoint failed:\n{sampled.stderr[-3000:]}"
    assert picture.stat().st_size > 0
