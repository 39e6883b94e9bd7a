"""model.safetensors: one self-describing file that rebuilds the model with no training code and
nothing unpickled. This module writes it (`save`) and reads its tensors back; vaezoo.loading rebuilds
the model from it (`vaezoo.load`). See docs/checkpoints.md for the format."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import vaezoo
from vaezoo.components import Model
from vaezoo.errors import CheckpointError, first_line
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.model_header import FORMAT_VERSION
from vaezoo.recipes.resolve import COMPONENTS

if TYPE_CHECKING:
    from vaezoo.plugins.registry import Entry

RECORD_KINDS = {
    "model": "models",
    **COMPONENTS,
}  # a component record's kind -> registry kind, in the order files list them


def component_records(recipe: Mapping[str, Any], built: Mapping[str, Entry]) -> list[dict[str, str]]:
    """For the model family and each component of a recipe: kind, name and the plugin distribution
    that provides it. The registry entries the model was `built` from (`Model.registry_entries`) serve;
    the registry is asked only for the others: the dataset (`build_model` does not build it), or all
    of them for a model built by hand."""
    from vaezoo.plugins.manager import get_registry

    records = []
    for key, kind in RECORD_KINDS.items():
        if key not in recipe:
            continue
        entry = built.get(key)
        if entry is None or entry.name != recipe[key]["name"]:
            entry = get_registry().get(kind, recipe[key]["name"])
        records.append(
            {
                "kind": key,
                "name": entry.name,
                "plugin": entry.plugin.name,
                "distribution": entry.plugin.distribution,
                "version": entry.plugin.version,
            }
        )
    return records


def state_tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors, floats as float32."""
    tensors = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensors[prefix + name] = tensor.contiguous().clone()
    return tensors


def save(model: Model, path: str | Path, recipe: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> None:
    """Write `model` and everything needed to rebuild it to `path`, atomically: its weights, `recipe`
    (the resolved recipe it was built from, `model.recipe`), the components it was built with, and
    `training` (what the file records about its training, `vaezoo.training`). docs/checkpoints.md"""
    metadata = {
        "format": "pt",
        "vaezoo.format_version": json.dumps(FORMAT_VERSION),
        "vaezoo.version": json.dumps(vaezoo.__version__),
        "vaezoo.torch_version": json.dumps(torch.__version__.split("+")[0]),
        "vaezoo.recipe": json.dumps(dict(recipe)),
        "vaezoo.components": json.dumps(component_records(recipe, model.registry_entries)),
        "vaezoo.data": json.dumps(
            {
                "shape": list(model.in_shape),
                "dtype": "float32",
                "range": [0.0, 1.0],
                "source": "uint8 / 255",
                "classes": list(model.classes),
                "conditional": bool(model.conditional),
            }
        ),
        "vaezoo.training": json.dumps(dict(training or {})),
        "vaezoo.objective": json.dumps({"objective": model.objective, "regularizer": model.regularizer}),
    }
    if model.dependencies:
        metadata["vaezoo.dependencies"] = json.dumps(dict(model.dependencies))
    write_bytes_atomic(path, save_tensors(state_tensors(model), metadata=metadata))


def read_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a model file's bytes (`read_metadata` gives them), all finite: a truncated or
    corrupt file, or one saved from a diverged run, is one CheckpointError naming it."""
    try:
        tensors = load_tensors(data)
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {first_line(error)}") from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: tensor {name} holds NaN or infinite values (the file is damaged, or was saved from "
                "a diverged run)"
            )
    return tensors


def check_sizes(model: torch.nn.Module | None, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """The tensors the recipe builds must be those in the file, shape for shape: a file's metadata
    cannot make vaezoo allocate more than the file holds."""
    if model is not None:
        load_weights(model, tensors, path, copy=False)


def load_weights(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path, copy: bool = True) -> None:
    """Copy tensors into the model; missing, extra or mis-shaped tensors are one clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        which = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(
            f"{path}: its tensors do not match the model its recipe builds ({which}; {len(missing)} missing, "
            f"{len(extra)} unexpected)"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(expected[name].shape)} in the model its recipe builds"
            )
    if copy:
        model.load_state_dict(tensors)
