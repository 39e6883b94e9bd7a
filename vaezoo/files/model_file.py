"""model.safetensors: one self-describing file that rebuilds the model with no training code and
nothing unpickled. See docs/checkpoints.md for the format."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import vaezoo
from vaezoo.components import Model
from vaezoo.errors import CheckpointError, MissingPlugin, VaezooError
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.model_header import (
    FORMAT_VERSION,
    family_of,
    objective_of,
    read_metadata,
    shown,
    valid_distribution,
    valid_version,
)
from vaezoo.recipes.build import build_model
from vaezoo.recipes.resolve import COMPONENTS, validate
from vaezoo.sharing.hub import local_model_path

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
    """Write `model` and everything needed to rebuild it to `path`, atomically."""
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
    write_bytes_atomic(path, save_tensors(state_tensors(model), metadata=metadata))


def check_plugins(
    metadata: Mapping[str, Any],
    path: Path | str,
    kinds: tuple[str, ...] = ("model", "encoder", "decoder", "prior", "loss"),
) -> None:
    """Each component of `kinds` the file needs must be registered (the dataset only when data are
    read: sampling needs no dataset plugin); name the distribution to install if not (a `pip
    install` line only for a valid distribution name: the file never chooses pip's options)."""
    from vaezoo.plugins.manager import disabled_plugins, get_registry

    registry = get_registry()
    for record in metadata["components"]:
        kind = RECORD_KINDS.get(record.get("kind"), "")
        if kind and record["kind"] not in kinds:
            continue
        if not kind or record.get("name") not in registry.entries[kind]:
            disabled = (
                f" (or remove {shown(record.get('plugin'))} from VAEZOO_DISABLE_PLUGINS)"
                if record.get("plugin") in disabled_plugins()
                else ""
            )
            distribution, version = record.get("distribution"), record.get("version")
            needs = f"{path} needs {record['kind'] if kind else shown(record.get('kind'))} {shown(record.get('name'))}"
            if valid_distribution(distribution):
                pinned = f" (version {version})" if valid_version(version) else ""
                raise MissingPlugin(
                    f"{needs} from plugin distribution {distribution!r}{pinned}: `pip install {distribution}`{disabled}"
                )
            raise MissingPlugin(
                f"{needs} from plugin {shown(record.get('plugin'))}, whose distribution name "
                f"{shown(distribution)} is unknown or not valid: install that plugin yourself{disabled}"
            )


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Rebuild the model saved in `path` (a path, `hf://ORG/NAME[@REV]` or URL) on `device`.
    `model.recipe` (set by `build_model`) and `model.metadata` tell what it is."""
    path = local_model_path(path)
    metadata, data = read_metadata(path)
    check_plugins(metadata, path)
    try:
        tensors = load_tensors(data)
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: tensor {name} holds NaN or infinite values (the file is damaged, or was saved from "
                "a diverged run)"
            )
    shape, classes = metadata["data"]["shape"], metadata["data"].get("classes", [])
    with _building(path):
        recipe = validate(str(metadata["recipe"].get("name", "checkpoint")), metadata["recipe"], need_dataset=False)
        on_meta = build_on_meta(recipe, shape, classes)
    check_sizes(on_meta, tensors, path)  # before any memory is taken
    with _building(path):
        model = build_model(recipe, shape, classes)
    load_weights(model, tensors, path)
    check_objective(model, metadata, path)
    model.metadata = metadata
    from vaezoo.trainer.devices import resolve_device

    return model.to(resolve_device(str(device))).eval()


def check_objective(model: Model, metadata: Mapping[str, Any], path: Path) -> None:
    """The objective and regularizer a file records are those its family declares (the family's
    declaration is what eval reports; a file that says otherwise is damaged or mislabelled)."""
    recorded = objective_of(metadata)
    declared = (model.objective, model.regularizer)
    if "objective" in metadata and recorded != declared:
        raise CheckpointError(
            f"{path} is damaged: metadata vaezoo.objective says objective {shown(recorded[0])} and regularizer "
            f"{shown(recorded[1])}, but model family {shown(family_of(metadata))} installed here declares "
            f"{declared[0]!r} and {declared[1]!r}"
        )


@contextlib.contextmanager
def _building(path: Path) -> Iterator[None]:
    """A recipe from a file that does not validate or build is one CheckpointError naming the file."""
    try:
        yield
    except VaezooError as error:
        raise CheckpointError(
            f"{path}: its recipe does not build with the installed plugins: {_first_line(error)}"
        ) from None
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError, OverflowError) as error:
        raise CheckpointError(
            f"{path} is damaged: its recipe does not build ({type(error).__name__}: {_first_line(error)})"
        ) from None


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, at most `limit` characters (it may quote a file's values)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return text if len(text) <= limit else text[:limit] + "..."


def build_on_meta(recipe: Mapping[str, Any], shape: Any, classes: Any) -> Model | None:
    """The model on torch's meta device: shapes without memory (None if a plugin cannot build there)."""
    try:
        with torch.device("meta"):
            return build_model(recipe, shape, classes)
    except VaezooError:
        raise
    except Exception:  # e.g. a constructor that reads tensor values: then only the real build can tell
        return None


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
