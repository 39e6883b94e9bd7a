"""Reading a model file's header and `vaezoo.*` metadata without torch (for `inspect`, `card` and
`push`, and as the first step of `vaezoo.checkpoint.load`). The format: docs/checkpoints.md."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaezoo.errors import CheckpointError
from vaezoo.hub import local_model_path

FORMAT_VERSION = 2
READS_FORMATS = (1, 2)  # format 1: vaezoo 0.1, whose recipes have no model table (family `vae`)
MAX_HEADER = 100_000_000
REQUIRED_KEYS = ("vaezoo.format_version", "vaezoo.version", "vaezoo.recipe", "vaezoo.components", "vaezoo.data")


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


def is_conditional(metadata: Mapping[str, Any]) -> bool:
    """Whether the model takes labels: `vaezoo.data.conditional` (when absent, only the `cvae` family)."""
    data = metadata.get("data", {})
    return bool(data.get("conditional", metadata["recipe"].get("model", {}).get("name") == "cvae"))


def parameter_count(header: Mapping[str, Any]) -> int:
    """Values in all the tensors a safetensors header describes."""
    return sum(math.prod(info.get("shape", [])) for key, info in header.items() if key != "__metadata__")


def describe(path: str | Path) -> dict[str, Any]:
    """What a model file (a path, `hf://` name or URL) holds (for `vaezoo inspect`), without building the model."""
    path = local_model_path(path)
    metadata, data = read_metadata(path)
    header = read_header(data, path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
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
        "parameters": parameter_count(header),
        "shapes": {k: v.get("shape") for k, v in sorted(tensors.items())},
        "training": training,
        "metrics": training.get("metrics", {}),
    }
