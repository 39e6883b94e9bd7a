"""A fitted sampler's file, beside its model: `NAME.sampler-SAMPLER.safetensors` for `NAME.safetensors`.
Tensors: the sampler's state dict. Metadata `vaezoo.sampler`: what built it and which model file (by
sha256) it was fitted to. Read with safetensors only, its header checked before anything is allocated."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vaezoo.errors import CheckpointError
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.model_header import MAX_RANK, read_file_header, read_header, shown, valid_distribution

MAX_CODE_SIZE = 1 << 20  # numbers in one flattened code
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}")


def sampler_path(model_path: str | Path, name: str) -> Path:
    """Where the sampler `name` fitted to the model file `model_path` is kept."""
    model_path = Path(model_path)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    return model_path.with_name(f"{model_path.name.removesuffix('.safetensors')}.sampler-{safe}.safetensors")


def save_sampler(path: Path, sampler: torch.nn.Module, record: dict[str, Any]) -> None:
    """Write the sampler's tensors and its `record` (name, keys, code_shape, model_sha256, ...)."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in sampler.state_dict().items()}
    write_bytes_atomic(path, save_tensors(tensors, metadata={"format": "pt", "vaezoo.sampler": json.dumps(record)}))


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "is not an object"
    name, keys, shape = record.get("name"), record.get("keys"), record.get("code_shape")
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        return f"names sampler {shown(name)}"
    if not (isinstance(keys, dict) and all(isinstance(k, str) and len(k) <= 100 for k in keys)):
        return "has keys that are not a table of names"
    if not (
        isinstance(shape, list)
        and 1 <= len(shape) <= MAX_RANK
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_CODE_SIZE for d in shape)
        and math.prod(shape) <= MAX_CODE_SIZE
    ):
        return f"has code_shape {shown(shape)}"
    if not (isinstance(record.get("model_sha256"), str) and _HEX64.fullmatch(record["model_sha256"])):
        return "has no model_sha256"
    if not valid_distribution(record.get("distribution")):
        return f"names distribution {shown(record.get('distribution'))}"
    return None


def read_sampler_record(path: Path) -> dict[str, Any]:
    """The checked `vaezoo.sampler` record of a sampler file, from its header alone."""
    if not path.is_file():
        raise CheckpointError(
            f"sampler file {path} " + ("is not a regular file" if path.exists() else "does not exist")
        )
    header, _ = read_file_header(path)
    raw = (header.get("__metadata__") or {}).get("vaezoo.sampler")
    try:
        record = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        record = None
    problem = "is missing" if record is None else _record_problem(record)
    if record is None or problem:
        raise CheckpointError(f"{path} is not a vaezoo sampler file or is damaged: its vaezoo.sampler record {problem}")
    return record


def load_sampler_tensors(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sampler file's tensors, which must be `expected`'s names, shapes and dtypes, all finite."""
    data = path.read_bytes()
    header = read_header(data, path)
    found = {name: info for name, info in header.items() if name != "__metadata__"}
    if set(found) != set(expected):
        which = sorted(set(found) ^ set(expected))[0]
        raise CheckpointError(f"{path}: its tensors are not those of the sampler it names ({shown(which)})")
    tensors = load_tensors(data)
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, the sampler has "
                f"{tuple(want.shape)} {want.dtype}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values (the file is damaged)")
    return tensors
