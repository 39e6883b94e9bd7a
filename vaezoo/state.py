"""state.safetensors: what `--resume` needs to continue a run exactly (weights, optimizer, counters,
RNG states of torch, numpy and python, the data order of the current epoch, and the metrics history).
It is the run folder's commit: written first at each epoch end, atomically."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vaezoo.checkpoint import load_weights, state_tensors
from vaezoo.modelfile import read_header
from vaezoo.errors import CheckpointError
from vaezoo.files import write_bytes_atomic


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _rng_state(data_rng: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.data": data_rng.clone(),
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "rng.python": torch.tensor(internal, dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    plain = {"numpy": [int(pos), int(has_gauss), float(gauss)], "python": [version, py_gauss]}
    return tensors, plain


def save_state(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, counters: dict[str, Any], data_rng: torch.Tensor, scaler: Any = None, history: list[dict[str, Any]] | None = None
) -> None:
    """Write the resumable state atomically. `data_rng` is the data generator's state at the start
    of the epoch in progress (its order is drawn again on resume); `history` the metrics of the epochs
    done (metrics.jsonl is rebuilt from it on resume)."""
    tensors = state_tensors(model, "model.")
    optimizer_tensors, optimizer_plain = _optimizer_tensors(optimizer)
    rng_tensors, rng_plain = _rng_state(data_rng)
    tensors.update(optimizer_tensors)
    tensors.update(rng_tensors)
    metadata = {
        "format": "pt",
        "vaezoo.counters": json.dumps(counters),
        "vaezoo.optimizer": json.dumps(optimizer_plain),
        "vaezoo.rng": json.dumps(rng_plain),
        "vaezoo.scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else None),
        "vaezoo.history": json.dumps(history or []),
    }
    write_bytes_atomic(path, save_tensors(tensors, metadata=metadata))


COUNTERS = {"epoch": int, "batch": int, "step": int, "loss_sum": float, "seconds": float}


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged: {what} (resume from another copy, or start a new run)")


def _check_state_fields(path: Path, counters: Any, optimizer_plain: Any, rng_plain: Any, history: Any) -> None:
    """One schema for the JSON parts of a state file: one error naming the first bad field."""
    if not isinstance(counters, dict):
        raise _damaged(path, "vaezoo.counters is not an object")
    for key, kind in COUNTERS.items():
        value = counters.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or (kind is int and not isinstance(value, int)) or not value >= 0 or value != value or value == float("inf"):
            raise _damaged(path, f"vaezoo.counters.{key} is {value!r}, expected a non-negative {kind.__name__}")
    if not (isinstance(optimizer_plain, dict) and isinstance(optimizer_plain.get("param_groups"), list) and isinstance(optimizer_plain.get("plain"), dict)):
        raise _damaged(path, "vaezoo.optimizer does not hold param_groups and plain values")
    for key in optimizer_plain["plain"]:
        index, _, name = str(key).partition(".")
        if not index.isdigit() or not name:
            raise _damaged(path, f"vaezoo.optimizer.plain has a bad key {key!r}")
    numpy_state, python_state = (rng_plain.get(k) if isinstance(rng_plain, dict) else None for k in ("numpy", "python"))
    if not (isinstance(numpy_state, list) and len(numpy_state) == 3 and isinstance(python_state, list) and len(python_state) == 2):
        raise _damaged(path, "vaezoo.rng does not hold the numpy and python generator states")
    if not (isinstance(history, list) and all(isinstance(row, dict) and isinstance(row.get("epoch"), int) for row in history)):
        raise _damaged(path, "vaezoo.history is not a list of per-epoch metrics")


def _check_rng_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    expected = {"rng.torch": torch.get_rng_state(), "rng.data": torch.Generator().get_state()}
    for key, like in expected.items():
        tensor = tensors.get(key)
        if tensor is None or tensor.dtype != like.dtype or tensor.shape != like.shape:
            raise _damaged(path, f"tensor {key} is missing or not a generator state")
    for key, length in (("rng.numpy", 624), ("rng.python", 625)):
        tensor = tensors.get(key)
        if tensor is None or tensor.dtype != torch.int64 or tuple(tensor.shape) != (length,):
            raise _damaged(path, f"tensor {key} is missing or not a generator state")


def load_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None) -> tuple[dict[str, Any], torch.Tensor, list[dict[str, Any]]]:
    """Restore weights, optimizer and RNG states from `path`; returns (counters, data_rng, history)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (no epoch finished and no stop was saved: start the run again)")
    data = path.read_bytes()
    raw = read_header(data, path).get("__metadata__") or {}
    try:
        counters = json.loads(raw["vaezoo.counters"])
        optimizer_plain = json.loads(raw["vaezoo.optimizer"])
        rng_plain = json.loads(raw["vaezoo.rng"])
        scaler_state = json.loads(raw.get("vaezoo.scaler", "null"))
        history = json.loads(raw.get("vaezoo.history", "[]"))
    except KeyError as error:
        raise CheckpointError(f"{path} is not a vaezoo run state ({error.args[0]} missing)") from None
    except (ValueError, RecursionError):
        raise _damaged(path, "its metadata is not valid JSON") from None
    _check_state_fields(path, counters, optimizer_plain, rng_plain, history)
    try:
        tensors = load_tensors(data)
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    _check_rng_tensors(path, tensors)
    load_weights(model, {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            if not index.isdigit():
                raise _damaged(path, f"tensor {key} is not an optimizer state")
            per_param.setdefault(int(index), {})[name] = value
    for key, value in optimizer_plain["plain"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": optimizer_plain["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the optimizer state does not match this recipe's model ({str(error).splitlines()[0]})") from None
    if scaler is not None and scaler.is_enabled() and scaler_state:
        scaler.load_state_dict(scaler_state)
    try:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        pos, has_gauss, gauss = rng_plain["numpy"]
        np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
        version, py_gauss = rng_plain["python"]
        random.setstate((int(version), tuple(tensors["rng.python"].tolist()), py_gauss))
    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
        raise _damaged(path, f"a generator state does not restore ({str(error).splitlines()[0]})") from None
    return counters, tensors["rng.data"], history
