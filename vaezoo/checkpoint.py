"""model.safetensors: one self-describing file that rebuilds the model with no training code and
nothing unpickled. See docs/checkpoints.md for the format."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import vaezoo
from vaezoo.errors import CheckpointError, MissingPlugin, VaezooError
from vaezoo.files import write_bytes_atomic
from vaezoo.hub import local_model_path
from vaezoo.components import Model
from vaezoo.model import build_model
from vaezoo.recipes import COMPONENTS, validate

FORMAT_VERSION = 2
READS_FORMATS = (1, 2)  # format 1: vaezoo 0.1, whose recipes have no model table (family `vae`)
KINDS = {"model": "models", **COMPONENTS}
MAX_HEADER = 100_000_000
REQUIRED_KEYS = ("vaezoo.format_version", "vaezoo.version", "vaezoo.recipe", "vaezoo.components", "vaezoo.data")


def component_records(recipe: Mapping[str, Any]) -> list[dict[str, str]]:
    """For the model family and each component of a recipe: kind, name and the plugin distribution
    that provides it."""
    from vaezoo.plugins import get_registry

    registry = get_registry()
    records = []
    for key, kind in KINDS.items():
        if key not in recipe:
            continue
        entry = registry.get(kind, recipe[key]["name"])
        records.append({"kind": key, "name": entry.name, "plugin": entry.plugin.name, "distribution": entry.plugin.distribution, "version": entry.plugin.version})
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
        "vaezoo.components": json.dumps(component_records(recipe)),
        "vaezoo.data": json.dumps({"shape": list(model.in_shape), "dtype": "float32", "range": [0.0, 1.0], "source": "uint8 / 255", "classes": list(model.classes), "conditional": bool(model.conditional)}),
        "vaezoo.training": json.dumps(dict(training or {})),
    }
    write_bytes_atomic(path, save_tensors(state_tensors(model), metadata=metadata))


def read_header(data: bytes, path: Path) -> dict[str, Any]:
    """The JSON header of safetensors bytes, or a CheckpointError saying what is wrong."""
    if len(data) == 0:
        raise CheckpointError(f"{path} is empty: not a vaezoo model (re-download or re-train it)")
    if (data[:2] == b"PK" or data[:1] == b"\x80") and data[8:9] != b"{":  # a header size of 128 mod 256 starts with 0x80 too
        raise CheckpointError(f"{path} looks like a pickled PyTorch file (.pt), not safetensors: vaezoo never unpickles files")
    if len(data) < 8:
        raise CheckpointError(f"{path} is truncated ({len(data)} bytes): not a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER, len(data) - 8):
        raise CheckpointError(f"{path} is not a safetensors file or is truncated (header of {size} bytes in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    try:
        end = max((info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        raise CheckpointError(f"{path} is not a safetensors file (its header does not describe tensors)") from None
    if not isinstance(end, int) or 8 + size + end > len(data):
        raise CheckpointError(f"{path} is truncated: its header describes {end} bytes of tensors but the file holds {len(data) - 8 - size} (re-download or re-train it)")
    return header


def read_metadata(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The decoded `vaezoo.*` metadata of a model file (a path, `hf://` name or URL), and the file's bytes."""
    path = local_model_path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"model file {path} is a folder: pass {path / 'model.safetensors'}")
        raise CheckpointError(f"model file {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    data = path.read_bytes()
    raw = read_header(data, path).get("__metadata__") or {}
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise CheckpointError(f"{path} is a safetensors file without vaezoo metadata ({missing[0]} missing): not a vaezoo model")
    metadata = {}
    for key, value in raw.items():
        if key.startswith("vaezoo."):
            try:
                metadata[key[len("vaezoo.") :]] = json.loads(value)
            except (TypeError, ValueError, RecursionError):
                raise CheckpointError(f"{path}: metadata {key} is not valid JSON (the file is damaged)") from None
    if metadata["format_version"] not in READS_FORMATS:
        raise CheckpointError(f"{path} uses checkpoint format {metadata['format_version']!r}, this vaezoo reads {', '.join(map(str, READS_FORMATS))}: upgrade vaezoo")
    problem = metadata_problem(metadata)
    if problem:
        raise CheckpointError(f"{path} is damaged: metadata {problem} (see docs/checkpoints.md)")
    return metadata, data


MAX_SIDE = 4096  # largest image side a file may declare (a 4096 x 4096 image is 16 M values per channel)
MAX_CHANNELS = 64


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def metadata_problem(metadata: Mapping[str, Any]) -> str | None:
    """The first field of decoded `vaezoo.*` metadata that breaks the format (docs/checkpoints.md),
    as "vaezoo.KEY: what is wrong", or None. Every field a reader uses is checked here, once."""
    if not isinstance(metadata.get("recipe"), dict):
        return "vaezoo.recipe is not an object"
    data = metadata.get("data")
    if not isinstance(data, dict):
        return "vaezoo.data is not an object"
    shape = data.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and _is_int(shape[0], 1, MAX_CHANNELS) and all(_is_int(side, 1, MAX_SIDE) for side in shape[1:])):
        return f"vaezoo.data.shape is {shape!r}, expected [C, H, W] with 1 <= C <= {MAX_CHANNELS} and sides of 1 to {MAX_SIDE}"
    classes = data.get("classes", [])
    if not (isinstance(classes, list) and len(classes) <= 100_000 and all(isinstance(name, str) for name in classes)):
        return "vaezoo.data.classes is not a list of class names"
    if not isinstance(data.get("conditional", False), bool):
        return "vaezoo.data.conditional is not true or false"
    components = metadata.get("components")
    if not (isinstance(components, list) and all(isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("kind", "name")) for r in components)):
        return "vaezoo.components is not a list of {kind, name, plugin, distribution, version} objects"
    training = metadata.get("training", {})
    if not (isinstance(training, dict) and isinstance(training.get("metrics", {}), dict)):
        return "vaezoo.training is not an object with a metrics object"
    for key, value in training.get("metrics", {}).items():
        if not (value is None or isinstance(value, (int, float, str, dict))):
            return f"vaezoo.training.metrics.{key} is not a number"
    return None


def check_plugins(metadata: Mapping[str, Any], path: Path) -> None:
    """Each component the file needs must be registered; name the distribution to install if not."""
    from vaezoo.plugins import get_registry

    registry = get_registry()
    for record in metadata["components"]:
        kind = KINDS.get(record.get("kind"), "")
        if not kind or record.get("name") not in registry.entries[kind]:
            from vaezoo.plugins import disabled_plugins

            disabled = f" (or remove {record.get('plugin')!r} from VAEZOO_DISABLE_PLUGINS)" if record.get("plugin") in disabled_plugins() else ""
            raise MissingPlugin(
                f"{path} needs {record.get('kind')} {record.get('name')!r} from plugin distribution "
                f"{record.get('distribution')!r} (version {record.get('version')}): `pip install {record.get('distribution')}`{disabled}"
            )


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Rebuild the model saved in `path` (a path, `hf://ORG/NAME[@REV]` or URL) on `device`.
    `model.recipe` and `model.metadata` tell what it is."""
    path = local_model_path(path)
    metadata, data = read_metadata(path)
    check_plugins(metadata, path)
    try:
        tensors = load_tensors(data)
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values (the file is damaged, or was saved from a diverged run)")
    shape, classes = metadata["data"]["shape"], metadata["data"].get("classes", [])
    with _building(path):
        recipe = validate(str(metadata["recipe"].get("name", "checkpoint")), metadata["recipe"])
        on_meta = build_on_meta(recipe, shape, classes)
    check_sizes(on_meta, tensors, path)  # before any memory is taken
    with _building(path):
        model = build_model(recipe, shape, classes)
    load_weights(model, tensors, path)
    model.recipe = recipe
    model.metadata = metadata
    from vaezoo.devices import resolve_device

    return model.to(resolve_device(str(device))).eval()


@contextlib.contextmanager
def _building(path: Path) -> Iterator[None]:
    """A recipe from a file that does not validate or build is one CheckpointError naming the file."""
    try:
        yield
    except VaezooError as error:
        raise CheckpointError(f"{path}: its recipe does not build with the installed plugins: {error}") from None
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is damaged: its recipe does not build ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


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
        raise CheckpointError(f"{path}: its tensors do not match the model its recipe builds ({which}; {len(missing)} missing, {len(extra)} unexpected)")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(tensor.shape)} in the file but {tuple(expected[name].shape)} in the model its recipe builds")
    if copy:
        model.load_state_dict(tensors)


def describe(path: str | Path) -> dict[str, Any]:
    """What a model file (a path, `hf://` name or URL) holds (for `vaezoo inspect`), without building the model."""
    path = local_model_path(path)
    metadata, data = read_metadata(path)
    header = read_header(data, path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    parameters = 0
    for info in tensors.values():
        count = 1
        for dim in info.get("shape", []):
            count *= dim
        parameters += count
    training = metadata.get("training", {})
    return {
        "path": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "vaezoo_version": metadata["version"],
        "recipe": metadata["recipe"],
        "format_version": metadata["format_version"],
        "model": next((r for r in metadata["components"] if r.get("kind") == "model"), {"kind": "model", "name": metadata["recipe"].get("model", {}).get("name", "vae")}),
        "components": metadata["components"],
        "data": metadata["data"],
        "tensors": len(tensors),
        "parameters": parameters,
        "shapes": {k: v.get("shape") for k, v in sorted(tensors.items())},
        "training": training,
        "metrics": training.get("metrics", {}),
    }
