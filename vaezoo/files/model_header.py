"""Reading a model file's header and `vaezoo.*` metadata without torch (for `inspect`, `card` and
`push`, and as the first step of `vaezoo.loading.load`). The format: docs/checkpoints.md.

Everything here treats a file as hostile: the header is read alone (at most MAX_HEADER bytes, the
tensors are never read for `inspect` or `card`), each tensor entry and each metadata field is checked
by one schema before any use, and text from a file goes into an error message only through `shown`
(control characters escaped, length bounded), never raw bytes as numbers."""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from vaezoo.errors import CheckpointError
from vaezoo.plugins.kinds import recipe_family
from vaezoo.plugins.registry import valid_distribution as valid_distribution  # re-exported for the file readers
from vaezoo.recipes.resolve import is_int, objective_problem

FORMAT_VERSION = 2
READS_FORMATS = (1, 2)  # format 1: vaezoo 0.1, whose recipes have no model table (family `vae`)
MAX_HEADER = 100_000_000  # bytes of JSON header
REQUIRED_KEYS = ("vaezoo.format_version", "vaezoo.version", "vaezoo.recipe", "vaezoo.components", "vaezoo.data")
# safetensors dtypes and their bytes per value
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
MAX_RANK = 8  # dimensions of one tensor
MAX_DIM = 2**40  # size of one dimension (a tensor's bytes must also match its data_offsets)
MAX_SIDE = 1024  # largest image side a file may declare
MAX_CHANNELS = 64
MAX_VALUES = 3 * 1024 * 1024  # C * H * W of one image: an RGB 1024 x 1024 picture
MAX_COMPONENTS = 64
MAX_TEXT = 100  # characters of text from a file shown in one error message
# terminal controls: C0 (tab and newline too, but in the recipe's summary), DEL, C1, bidirectional overrides
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_FREE_TEXT = ((None, "recipe"), "summary")  # the one field that may hold newlines and tabs
# a distribution name as PEP 508 spells it, and a version as PEP 440 does (loosely): safe in a pip line
_VERSION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.+!_-]{0,62}[A-Za-z0-9])?")


def shown(value: Any, limit: int = MAX_TEXT) -> str:
    """`value` from a file as text for one line of a terminal: a string quoted by `repr` (which escapes
    every control, line-breaking and bidirectional character), at most `limit` characters of it; a list
    or object as its kind and size, not its contents."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, (bool, float)) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a number of more than 18 digits"
    if isinstance(value, list):
        if len(value) <= 8 and all(isinstance(v, (int, float)) and abs(v) < 10**18 for v in value):
            return "[" + ", ".join(map(shown, value)) + "]"
        return f"a list of {len(value)} items"
    return f"an object of {len(value)} keys" if isinstance(value, dict) else type(value).__name__


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    """Text already checked for control characters, at most `limit` characters of it."""
    return text if len(text) <= limit else text[:limit] + "..."


def valid_version(version: Any) -> bool:
    """Whether `version` may be pinned in a `pip install` line."""
    return isinstance(version, str) and bool(_VERSION.fullmatch(version)) and version != "unknown"


# ---- the safetensors header ----------------------------------------------------------------------


def _header_size(first: bytes, file_size: int, path: Path) -> int:
    """The header length from a file's first 9 bytes, or a CheckpointError (never showing the number:
    it is 8 raw bytes of whatever the file is)."""
    if file_size == 0:
        raise CheckpointError(f"{path} is empty: not a vaezoo model (re-download or re-train it)")
    if (first[:2] == b"PK" or first[:1] == b"\x80") and first[
        8:9
    ] != b"{":  # a header size of 128 mod 256 starts with 0x80 too
        raise CheckpointError(
            f"{path} looks like a pickled PyTorch file (.pt), not safetensors: vaezoo never unpickles files"
        )
    if file_size < 8:
        raise CheckpointError(f"{path} is truncated ({file_size} bytes): not a safetensors file")
    size = int.from_bytes(first[:8], "little")
    if size < 2 or size > min(MAX_HEADER, file_size - 8):
        raise CheckpointError(f"{path} is not a safetensors file or is truncated (header length out of range)")
    return size


def _tensor_problem(info: Any) -> str | None:
    """What is wrong with one tensor entry of a header, or None."""
    if not isinstance(info, dict):
        return "is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not (isinstance(dtype, str) and dtype in DTYPE_BYTES):
        return f"has dtype {shown(dtype)}, not one of {', '.join(DTYPE_BYTES)}"
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(is_int(d, 0, MAX_DIM) for d in shape)):
        return f"has shape {shown(shape)}, not a list of at most {MAX_RANK} sizes from 0 to 2^40"
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(is_int(o, 0, 2**62) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        return f"has data_offsets {shown(offsets)}, not [begin, end] with 0 <= begin <= end"
    if math.prod(shape) * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        return f"has shape {shown(shape)} of {dtype}, which does not match its data_offsets"
    return None


def _parse_header(raw: bytes, data_size: int, path: Path) -> dict[str, Any]:
    """The checked header of a file whose JSON header is `raw`, followed by `data_size` bytes."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # also huge numbers, deep nesting
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON that vaezoo reads)") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path} is not a safetensors file (its __metadata__ is not an object of strings)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(info)
        if problem:
            raise CheckpointError(f"{path} is not a safetensors file or is damaged: tensor {shown(name)} {problem}")
        end = max(end, info["data_offsets"][1])
    if end > data_size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {end} bytes of tensors but the file holds "
            f"{data_size} (re-download or re-train it)"
        )
    if end < data_size:
        raise CheckpointError(
            f"{path} is not a safetensors file or is damaged: {data_size - end} bytes follow the tensors its "
            "header describes"
        )
    return header


def read_header(data: bytes, path: str | Path) -> dict[str, Any]:
    """The checked JSON header of safetensors bytes, or a CheckpointError saying what is wrong."""
    size = _header_size(data[:9], len(data), Path(path))
    return _parse_header(data[8 : 8 + size], len(data) - 8 - size, Path(path))


def read_file_header(path: Path) -> tuple[dict[str, Any], int]:
    """The checked JSON header of the safetensors file `path` and the file's size, reading the header
    only (never the tensors)."""
    with path.open("rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        size = _header_size(handle.read(9), file_size, path)
        handle.seek(8)
        raw = handle.read(size)
    if len(raw) < size:  # it shrank while we read
        raise CheckpointError(f"{path} is truncated: not a safetensors file")
    return _parse_header(raw, file_size - 8 - size, path), file_size


# ---- vaezoo metadata -----------------------------------------------------------------------------


class ModelHeader(NamedTuple):
    """What a model file says about itself, read from its header alone."""

    path: Path
    metadata: dict[str, Any]  # the decoded, checked `vaezoo.*` values, keys without the prefix
    header: dict[str, Any]  # the safetensors header (tensor entries and `__metadata__`)
    size: int  # bytes in the file


def _model_path(path: str | Path) -> Path:
    """A local model file (`hf://` names and URLs are resolved by the caller: vaezoo.sharing.hub.local_model_path)."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"model file {path} is a folder: pass {path / 'model.safetensors'}")
        raise CheckpointError(f"model file {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    return path


def decode_metadata(header: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The `vaezoo.*` metadata of a checked header, decoded and checked by `metadata_problem`."""
    raw = header.get("__metadata__") or {}
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise CheckpointError(
            f"{path} is a safetensors file without vaezoo metadata ({missing[0]} missing): not a vaezoo model"
        )
    metadata = {}
    for key, value in raw.items():
        if key.startswith("vaezoo."):
            try:
                metadata[key[len("vaezoo.") :]] = json.loads(value)
            except (TypeError, ValueError, RecursionError) as error:  # also numbers of thousands of digits
                raise CheckpointError(
                    f"{path}: metadata {shown(key)} is not valid JSON (the file is damaged)"
                ) from error
    version = metadata["format_version"]
    if not (is_int(version, 0, 10**6) and version in READS_FORMATS):
        raise CheckpointError(
            f"{path} uses checkpoint format {shown(version)}, this vaezoo reads "
            f"{', '.join(map(str, READS_FORMATS))}: upgrade vaezoo"
        )
    problem = metadata_problem(metadata)
    if problem:
        raise CheckpointError(f"{path} is damaged: metadata {problem} (see docs/checkpoints.md)")
    return metadata


def read_model_header(path: str | Path) -> ModelHeader:
    """The checked metadata and header of a model file (a path, `hf://` name or URL), reading only its
    header: what `inspect` and `card` need."""
    path = _model_path(path)
    header, size = read_file_header(path)
    return ModelHeader(path, decode_metadata(header, path), header, size)


def read_metadata(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The decoded `vaezoo.*` metadata of a model file (a path, `hf://` name or URL), and the file's
    bytes: its header is checked before the rest of the file is read."""
    path = read_model_header(path).path
    data = path.read_bytes()
    return decode_metadata(read_header(data, path), path), data


def _control_text(value: Any) -> str | None:
    """The place (`recipe.encoder.name`) of the first string, key or value, anywhere in `value` that
    holds a control character (a newline too, but in `recipe.summary`), or None. Iterative, and the
    place is spelled out only when found."""
    stack: list[tuple[Any, tuple | None]] = [(value, None)]  # (item, (parent trail, key))
    while stack:
        item, trail = stack.pop()
        found = None
        if isinstance(item, str) and (_CONTROL_BUT_LINES if trail == _FREE_TEXT else _CONTROL).search(item):
            found = trail
        elif isinstance(item, dict):
            for key, child in item.items():
                if _CONTROL.search(key):
                    found = (trail, "<a key>")
                    break
                stack.append((child, (trail, key)))
        elif isinstance(item, list):
            stack.extend((child, (trail, f"[{i}]")) for i, child in enumerate(item))
        if found is not None:
            parts = []
            while found is not None:
                found, key = found
                parts.append(key)
            return ".".join(reversed(parts)).replace(".[", "[")
    return None


def _component_problem(components: Any) -> str | None:
    if not (isinstance(components, list) and len(components) <= MAX_COMPONENTS):
        return f"vaezoo.components is not a list of at most {MAX_COMPONENTS} objects"
    for i, record in enumerate(components):
        if not (
            isinstance(record, dict)
            and all(isinstance(record.get(k), str) for k in ("kind", "name", "plugin", "distribution", "version"))
        ):
            return f"vaezoo.components[{i}] is not a {{kind, name, plugin, distribution, version}} object of strings"
    return None


def _recipe_problem(recipe: Any) -> str | None:
    if not isinstance(recipe, dict):
        return "vaezoo.recipe is not an object"
    for key in ("name", "summary"):
        if not isinstance(recipe.get(key, ""), str):
            return f"vaezoo.recipe.{key} is not a string"
    for key in ("model", "dataset", "encoder", "decoder", "prior", "loss", "train"):
        if not isinstance(recipe.get(key, {}), dict):
            return f"vaezoo.recipe.{key} is not a table"
        if not isinstance(recipe.get(key, {}).get("name", ""), str):
            return f"vaezoo.recipe.{key}.name is not a string"
    return None


SHAPE_LIMITS = (
    f"1 <= C <= {MAX_CHANNELS}, sides of 1 to {MAX_SIDE} and C * H * W at most {MAX_VALUES:,} (3 x 1024 x 1024)"
)


def fits_model_file(shape: Any) -> bool:
    """Whether `shape` is a `(C, H, W)` of whole numbers that a model file may declare (SHAPE_LIMITS)."""
    return (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and is_int(shape[0], 1, MAX_CHANNELS)
        and all(is_int(side, 1, MAX_SIDE) for side in shape[1:])
        and math.prod(shape) <= MAX_VALUES
    )


def shape_problem(shape: Any) -> str | None:
    """What is wrong with a dataset's declared `shape`, or None when it is a `(C, H, W)` of whole
    numbers that a model file can hold. A 1-D signal of C channels and length L is `(C, 1, L)`."""
    try:
        sides = tuple(operator.index(side) for side in shape)
    except TypeError:
        return f"{shape!r} is not a tuple of whole numbers (C, H, W)"
    if len(sides) == 2:
        return (
            f"{sides}, two sides: declare a 1-D signal of C channels and length L as (C, 1, L), here "
            f"{(sides[0], 1, sides[1])}"
        )
    if not fits_model_file(sides):
        return f"{sides} is not a (C, H, W) with {SHAPE_LIMITS}"
    return None


def _data_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "vaezoo.data is not an object"
    shape = data.get("shape")
    if not (isinstance(shape, list) and fits_model_file(shape)):
        return f"vaezoo.data.shape is {shown(shape)}, expected [C, H, W] with {SHAPE_LIMITS}"
    classes = data.get("classes", [])
    if not (isinstance(classes, list) and len(classes) <= 100_000 and all(isinstance(name, str) for name in classes)):
        return "vaezoo.data.classes is not a list of class names"
    if not isinstance(data.get("conditional", False), bool):
        return "vaezoo.data.conditional is not true or false"
    return None


def _training_problem(training: Any) -> str | None:
    if not (isinstance(training, dict) and isinstance(training.get("metrics", {}), dict)):
        return "vaezoo.training is not an object with a metrics object"
    for key in ("epochs", "steps", "train_images", "test_images"):
        if training.get(key) is not None and not is_int(training[key], 0, 2**63):
            return f"vaezoo.training.{key} is not a whole number"
    for key in ("precision", "device"):
        if not isinstance(training.get(key, ""), str):
            return f"vaezoo.training.{key} is not a string"
    for key, value in training.get("metrics", {}).items():
        if not (value is None or isinstance(value, (int, float, str, dict))):
            return f"vaezoo.training.metrics.{_clip(key)} is not a number"
    return None


def metadata_problem(metadata: Mapping[str, Any], depth: int = 0) -> str | None:
    """The first field of decoded `vaezoo.*` metadata that breaks the format (docs/checkpoints.md),
    as "vaezoo.KEY: what is wrong", or None. Every field a reader uses is checked here, once: its
    type, its bounds, and that no text anywhere holds a control character (ESC, CR, ...). `depth`:
    how deep in `vaezoo.dependencies` these metadata are."""
    place = _control_text(dict(metadata)) if depth == 0 else None  # the outermost call checks the nested ones
    if place is not None:
        return f"vaezoo.{_clip(place)} holds a control character (ESC, CR, a newline, ...)"
    for key in ("version", "torch_version"):
        if not isinstance(metadata.get(key, ""), str):
            return f"vaezoo.{key} is not a string"
    return (
        _recipe_problem(metadata.get("recipe"))
        or _data_problem(metadata.get("data"))
        or _component_problem(metadata.get("components"))
        or _training_problem(metadata.get("training", {}))
        or _objective_problem(metadata)
        or _dependencies_problem(metadata.get("dependencies", {}), depth)
    )


MAX_DEPENDENCY_DEPTH = 4  # a model built on a model built on ...: levels one file may describe
MAX_SOURCE = 2048  # characters of a dependency's source (a path, hf:// name or URL)
_SHA256 = re.compile(r"[0-9a-f]{64}")


MAX_DEPENDENCIES = 16  # model files one file may record, at every depth together


def _dependency_count(dependencies: Any) -> int:
    """How many model files a `vaezoo.dependencies` object records, nested ones included (iteratively;
    stops counting past MAX_DEPENDENCIES)."""
    count, stack = 0, [dependencies]
    while stack and count <= MAX_DEPENDENCIES:
        level = stack.pop()
        for record in level.values() if isinstance(level, dict) else ():
            count += 1
            metadata = record.get("metadata") if isinstance(record, dict) else None
            if isinstance(metadata, dict) and isinstance(metadata.get("dependencies"), dict):
                stack.append(metadata["dependencies"])
    return count


def _dependencies_problem(dependencies: Any, depth: int) -> str | None:
    """`vaezoo.dependencies`: for each model file the family was built on (`Model.model_files`), what
    the recipe named (`source`), its `sha256` and its own vaezoo.* `metadata` (checked the same way)."""
    if not (isinstance(dependencies, dict) and len(dependencies) <= 8):
        return "vaezoo.dependencies is not an object of at most 8 model files"
    if dependencies and depth >= MAX_DEPENDENCY_DEPTH:
        return f"vaezoo.dependencies nests more than {MAX_DEPENDENCY_DEPTH} model files deep"
    if depth == 0 and _dependency_count(dependencies) > MAX_DEPENDENCIES:
        return f"vaezoo.dependencies records more than {MAX_DEPENDENCIES} model files in all"
    for key, record in dependencies.items():
        where = f"vaezoo.dependencies.{_clip(key)}"
        if not key.isidentifier():
            return f"{where} is not a recipe key"
        if not (isinstance(record, dict) and isinstance(record.get("metadata"), dict)):
            return f"{where} is not a {{source, sha256, metadata}} object"
        if not (isinstance(record.get("source"), str) and len(record["source"]) <= MAX_SOURCE):
            return f"{where}.source is not a path or name of at most {MAX_SOURCE} characters"
        if not (isinstance(record.get("sha256"), str) and _SHA256.fullmatch(record["sha256"])):
            return f"{where}.sha256 is not a sha256"
        problem = metadata_problem(record["metadata"], depth + 1)
        if problem:
            return f"{where}.metadata: {problem}"
    return None


def _objective_problem(metadata: Mapping[str, Any]) -> str | None:
    """`vaezoo.objective`: what the family minimises (`objective`, "elbo" for a VAE) and the name of
    its regularizer (`kl` for a VAE), as `vaezoo.recipes.resolve.objective_problem` allows a family to
    declare them. Files before vaezoo 0.3 have none (then elbo and kl); files of 0.3 and later always do."""
    if "objective" not in metadata:
        version = re.match(r"(\d+)\.(\d+)", str(metadata.get("version", "")))
        if version and (int(version[1]), int(version[2])) >= (0, 3):
            return "vaezoo.objective is missing (files of vaezoo 0.3 and later record it)"
        return None
    objective = metadata["objective"]
    if not (isinstance(objective, dict) and set(objective) == {"objective", "regularizer"}):
        return "vaezoo.objective is not an object of objective and regularizer"
    problem = objective_problem(objective["objective"], objective["regularizer"])
    if problem:
        return f"vaezoo.objective: {problem}"
    metrics = metadata.get("training", {}).get("metrics", {})
    if "test_loss" in metrics and f"test_{objective['regularizer']}" not in metrics:  # the loop writes both
        return (
            f"vaezoo.objective names the regularizer {objective['regularizer']!r}, but vaezoo.training.metrics "
            f"has no test_{objective['regularizer']} (the label and the metrics disagree)"
        )
    return None


def objective_of(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(objective, regularizer) as a checked file records them: ("elbo", "kl") for files before
    vaezoo 0.3. The file's label: `vaezoo.loading.load` checks it against the family."""
    objective = metadata.get("objective", {})
    return objective.get("objective", "elbo"), objective.get("regularizer", "kl")


def family_of(metadata: Mapping[str, Any]) -> str:
    """The model family a checked file's recipe names (`vae` when it names none: vaezoo 0.1)."""
    return recipe_family(metadata["recipe"]) or "vae"


def is_conditional(metadata: Mapping[str, Any]) -> bool:
    """Whether the model takes labels: `vaezoo.data.conditional` (when absent, only the `cvae` family)."""
    data = metadata.get("data", {})
    return bool(data.get("conditional", family_of(metadata) == "cvae"))


def parameter_count(header: Mapping[str, Any]) -> int:
    """Values in all the tensors a (checked) safetensors header describes."""
    return sum(math.prod(info["shape"]) for key, info in header.items() if key != "__metadata__")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: str | Path) -> dict[str, Any]:
    """What a model file (a path, `hf://` name or URL) holds (for `vaezoo inspect`), without building
    the model or reading its tensors into memory (the sha256 is computed a megabyte at a time)."""
    path, metadata, header, size = read_model_header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    training = metadata.get("training", {})
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "size_bytes": size,
        "vaezoo_version": metadata["version"],
        "recipe": metadata["recipe"],
        "format_version": metadata["format_version"],
        "model": next(
            (r for r in metadata["components"] if r.get("kind") == "model"),
            {"kind": "model", "name": family_of(metadata)},
        ),
        "components": metadata["components"],
        "data": metadata["data"],
        "tensors": len(tensors),
        "parameters": parameter_count(header),
        "shapes": {k: v.get("shape") for k, v in sorted(tensors.items())},
        "training": training,
        # recorded: False for files before vaezoo 0.3, which record none (read as elbo and kl)
        "objective": {
            **dict(zip(("objective", "regularizer"), objective_of(metadata))),
            "recorded": "objective" in metadata,
        },
        "metrics": training.get("metrics", {}),
        "dependencies": {
            key: {
                "source": record["source"],
                "sha256": record["sha256"],
                "recipe": record["metadata"]["recipe"].get("name"),
                "model": record["metadata"]["recipe"].get("model", {}).get("name", "vae"),
            }
            for key, record in metadata.get("dependencies", {}).items()
        },
    }
