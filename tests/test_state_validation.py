"""A training state (state.safetensors) is checked against the run that resumes it before any step: a
foreign, damaged or edited state is one line naming the file (exit 2) and the folder stays as it was;
a family's own state, whatever names its optimizers have, resumes (docs/reliability.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_cli_batch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tinydata import TINY_ARGS, error_lines

import vaezoo
from vaezoo.errors import PluginError

# a vae-gan whose optimizers are named "d" and "d.x" (a name, and that name with a dot and more)
DOTTED_PLUGIN = """
import vaezoo
from vaezoo_defaults.vaegan.model import VAEGAN

NAMES = {"encoder": "d", "decoder": "d.x", "discriminator": "discriminator"}


class Dotted(VAEGAN):
    def parameter_groups(self):
        return {NAMES[name]: group for name, group in super().parameter_groups().items()}

    def training_step(self, x, y, step, update):
        return super().training_step(x, y, step, lambda name, loss: update(NAMES[name], loss))


@vaezoo.hookimpl
def register_models(register):
    register("dotted", Dotted)
"""
DOTTED_RECIPE = """name = "cifar-dotted"
latent_dim = 4
model = { name = "dotted", disc_hidden = [4, 8] }
dataset = { name = "cifar10" }
encoder = { name = "conv", hidden = [4, 8, 8] }
decoder = { name = "conv", hidden = [8, 8, 4] }
prior = { name = "normal" }
loss = { name = "bce-kl" }
train = { epochs = 1, batch_size = 16, lr = 3e-4, optimizer = "adam" }
"""
ONE_EPOCH = ["--epochs", "1", "--limit", "32", "--set", "train.test_limit=16", "--device", "cpu", *TINY_ARGS]

Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]


def read_state(path: Path) -> tuple[Tensors, Metadata]:
    with safe_open(str(path), "pt") as opened:
        metadata = opened.metadata()
    return load_file(path), metadata


def groups_edit(key: str, value: object, optimizer: str = "vaezoo.optimizer") -> Callable[[Tensors, Metadata], None]:
    """Set a setting of the optimizer's first param group."""

    def edit(tensors: Tensors, metadata: Metadata) -> None:
        saved = json.loads(metadata[optimizer])
        saved["param_groups"][0][key] = value
        metadata[optimizer] = json.dumps(saved)

    return edit


def counters_edit(key: str, value: object) -> Callable[[Tensors, Metadata], None]:
    def edit(tensors: Tensors, metadata: Metadata) -> None:
        metadata["vaezoo.counters"] = json.dumps({**json.loads(metadata["vaezoo.counters"]), key: value})

    return edit


def metadata_edit(key: str, value: str) -> Callable[[Tensors, Metadata], None]:
    """Replace the metadata entry `key` by the text `value`."""
    return lambda tensors, metadata: metadata.update({key: value})


def list_in_history(tensors: Tensors, metadata: Metadata) -> None:
    history = json.loads(metadata["vaezoo.history"])
    history[0]["test_loss"] = [1.0]  # the red team's: accepted, then an internal error at the epoch's end
    metadata["vaezoo.history"] = json.dumps(history)


def nan_in_history(tensors: Tensors, metadata: Metadata) -> None:
    history = json.loads(metadata["vaezoo.history"])
    history[0]["train_loss"] = math.nan
    metadata["vaezoo.history"] = json.dumps(history)


def tensor_edit(change: Callable[[Tensors], None]) -> Callable[[Tensors, Metadata], None]:
    return lambda tensors, metadata: change(tensors)


def first_weight(tensors: Tensors) -> str:
    return next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point())


def nan_at(key: str | Callable[[Tensors], str]) -> Callable[[Tensors], None]:
    def change(tensors: Tensors) -> None:
        name = key(tensors) if callable(key) else key
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = math.nan

    return change


def drop_discriminator(rename: bool) -> Callable[[Tensors], None]:
    def change(tensors: Tensors) -> None:
        for key in [k for k in tensors if k.startswith("optimizers.discriminator.")]:
            tensor = tensors.pop(key)
            if rename:
                tensors[key.replace("discriminator", "discriminatr", 1)] = tensor

    return change


# case: (run the state comes from, edit of its state, what the error line says)
CASES: dict[str, tuple[str, Callable[[Tensors, Metadata], None] | None, str]] = {
    "a cifar-vae state in a cifar-wae run": ("vae", None, "is the state of a run of recipe 'cifar-vae' (model 'vae')"),
    "maximize": ("vae", groups_edit("maximize", True), "param_groups[0].maximize is true, this run's is false"),
    "betas": ("vae", groups_edit("betas", [2.0, 0.999]), "param_groups[0].betas is [2.0, 0.999]"),
    "eps": ("vae", groups_edit("eps", -1), "param_groups[0].eps is -1"),
    "amsgrad": ("vae", groups_edit("amsgrad", True), "param_groups[0].amsgrad is true"),
    "a learning rate of 0": ("vae", groups_edit("lr", 0), "param_groups[0].lr is 0, not a valid lr"),
    "batch 999": ("vae", counters_edit("batch", 999), "vaezoo.counters.batch is 999, but an epoch of this run has 4"),
    "NaN in the history": ("vae", nan_in_history, "vaezoo.history of epoch 1 has a 'train_loss' that is not a finite"),
    "a list in the history": (
        "vae",
        list_in_history,
        "vaezoo.history of epoch 1 has a 'test_loss' that is not a finite",
    ),
    "an extra tensor": (
        "vae",
        tensor_edit(lambda t: t.update({"extra.x": torch.zeros(2)})),
        "holds a tensor 'extra.x' that is no part of this run's state",
    ),
    "a state of parameter 999": (
        "vae",
        tensor_edit(lambda t: t.update({"optimizer.999.exp_avg": torch.zeros(2)})),
        "has a state for parameter 999",
    ),
    "exp_avg_sq missing": (
        "vae",
        tensor_edit(lambda t: t.pop("optimizer.0.exp_avg_sq")),
        "the state of parameter 0 lacks exp_avg_sq",
    ),
    "a moment of the wrong shape": (
        "vae",
        tensor_edit(lambda t: t.update({"optimizer.0.exp_avg": torch.zeros(3)})),
        "tensor optimizer.0.exp_avg is float32 of shape (3,), expected float32 of shape",
    ),
    "a negative step": (
        "vae",
        tensor_edit(lambda t: t.update({"optimizer.0.step": torch.tensor(-5.0)})),
        "tensor optimizer.0.step holds negative values",
    ),
    "a NaN moment": ("vae", tensor_edit(nan_at("optimizer.1.exp_avg")), "tensor optimizer.1.exp_avg holds NaN"),
    "a NaN weight": ("vae", tensor_edit(nan_at(first_weight)), "holds NaN or infinite values"),
    "negative seconds": ("vae", counters_edit("seconds", -5.0), "damaged"),
    "an epoch of the wrong type": ("vae", counters_edit("epoch", "one"), "damaged"),
    "counters not an object": ("vae", metadata_edit("vaezoo.counters", "[1, 2]"), "damaged"),
    "optimizer garbage": (
        "vae",
        metadata_edit("vaezoo.optimizer", json.dumps({"param_groups": "x", "plain": {}})),
        "damaged",
    ),
    "rng garbage": ("vae", metadata_edit("vaezoo.rng", json.dumps({"numpy": [1], "python": []})), "damaged"),
    "history garbage": ("vae", metadata_edit("vaezoo.history", json.dumps([{"epoch": "x"}])), "damaged"),
    "counters not JSON": ("vae", metadata_edit("vaezoo.counters", "{{{"), "damaged"),
    "an rng state of the wrong shape": (
        "vae",
        tensor_edit(lambda t: t.update({"rng.torch": torch.zeros(3, dtype=torch.uint8)})),
        "rng.torch",
    ),
    "discriminator moments dropped": (
        "vae-gan",
        tensor_edit(drop_discriminator(rename=False)),
        "optimizer 'discriminator': the state of parameter 0 is missing",
    ),
    "discriminator moments renamed": (
        "vae-gan",
        tensor_edit(drop_discriminator(rename=True)),
        "holds a tensor 'optimizers.discriminatr.",
    ),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def resumes(small_run: Path, cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every case of CASES resumed with `--epochs 2` from a damaged copy of a real run, and a run of the
    dotted family resumed, all in one batch: {case: (folder, files before, result)}."""
    root = tmp_path_factory.mktemp("states")
    plugin = root / "plugin"
    plugin.mkdir()
    (plugin / "dotted_plugin.py").write_text(DOTTED_PLUGIN)
    info = plugin / "dotted_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dotted-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\ndotted = dotted_plugin\n")
    (root / "cifar-dotted.toml").write_text(DOTTED_RECIPE)
    env = {
        "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
        "VAEZOO_DATA_DIR": str(cifar),
    }
    runs = {"vae": small_run, "vae-gan": root / "vae-gan", "wae": root / "wae", "dotted": root / "dotted"}
    fresh = [
        ["run", "cifar-vae-gan", *ONE_EPOCH, "--set", "model.disc_hidden=[4,8]", "--out", str(runs["vae-gan"])],
        ["run", "cifar-wae", *ONE_EPOCH, "--out", str(runs["wae"])],
        ["run", str(root / "cifar-dotted.toml"), "--epochs", "1", "--limit", "32", "--device", "cpu", "--out"]
        + [str(runs["dotted"]), "--set", "train.test_limit=16", "--set", "train.sample_count=4"],
    ]
    for result in run_cli_batch(fresh, root, env=env):
        assert result.returncode == 0, result.stderr[-2000:]
    cases, commands = {}, []
    for case, (source, edit, _) in CASES.items():
        folder = root / "cases" / case.replace(" ", "-")
        target = "wae" if edit is None else source
        shutil.copytree(runs[target], folder)
        if edit is None:  # the state of another family's run, copied in
            shutil.copy(runs[source] / "state.safetensors", folder / "state.safetensors")
        else:
            tensors, metadata = read_state(folder / "state.safetensors")
            edit(tensors, metadata)
            save_file(tensors, folder / "state.safetensors", metadata=metadata)
        recipe = {"vae": "cifar-vae", "vae-gan": "cifar-vae-gan", "wae": "cifar-wae"}[target]
        cases[case] = (folder, snapshot(folder))
        commands.append(["run", recipe, "--resume", str(folder), "--epochs", "2", "--device", "cpu"])
    commands.append(["run", "cifar-dotted", "--resume", str(runs["dotted"]), "--epochs", "2", "--device", "cpu"])
    *results, dotted = run_cli_batch(commands, root, env=env)
    return {
        **{case: (*cases[case], result) for case, result in zip(cases, results)},
        "dotted": (runs["dotted"], dotted),
    }


@pytest.mark.parametrize("case", CASES)
def test_a_foreign_or_damaged_state_is_refused_before_any_step(resumes: dict, case: str) -> None:
    folder, before, result = resumes[case]
    lines = [line for line in error_lines(result.stderr) if not line.startswith("vaezoo: warning:")]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert lines[0].startswith(f"vaezoo: error: {folder / 'state.safetensors'}")
    assert CASES[case][2] in lines[0]
    assert snapshot(folder) == before  # recipe.toml, metrics.jsonl and the state as they were


def test_optimizer_names_with_dots_round_trip(resumes: dict) -> None:
    folder, result = resumes["dotted"]
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    with safe_open(str(folder / "state.safetensors"), "pt") as opened:
        assert set(json.loads(opened.metadata()["vaezoo.optimizers"])) == {"d", "d.x", "discriminator"}
        assert any(key.startswith("optimizers.d.x.") for key in opened.keys())  # read back as "d.x", not "d"


@pytest.mark.parametrize("name", ["", 7, "bell\a", "x" * 101])
def test_an_optimizer_name_that_cannot_be_stored_is_refused_when_declared(small_model: Path, name: object) -> None:
    from vaezoo.components import ParamGroup
    from vaezoo.recipes.resolve import TRAIN_DEFAULTS
    from vaezoo.trainer.settings import TrainSettings
    from vaezoo.trainer.step import make_optimizers

    model = vaezoo.load(small_model)
    model.parameter_groups = lambda: {name: ParamGroup(list(model.parameters()))}
    with pytest.raises(PluginError, match="named an optimizer .* a name is 1 to 100 letters"):
        make_optimizers(model, TrainSettings(**TRAIN_DEFAULTS))
