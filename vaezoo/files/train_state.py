"""state.safetensors: what `--resume` needs to continue a run exactly (weights, optimizer, counters,
RNG states of torch, numpy and python, the data order of the current epoch, and the metrics history).
It is the run folder's commit: written first at each epoch end, atomically."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vaezoo.errors import CheckpointError
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.model_file import load_weights, state_tensors
from vaezoo.files.model_header import read_header

Optimizers = Mapping[str, torch.optim.Optimizer]
MAIN = "model"  # the optimizer of a family with one: saved as vaezoo 0.2 saved it (`optimizer.*`)


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, prefix: str = "optimizer."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _named(optimizers: torch.optim.Optimizer | Optimizers) -> dict[str, torch.optim.Optimizer]:
    return {MAIN: optimizers} if isinstance(optimizers, torch.optim.Optimizer) else dict(optimizers)


def _several(optimizers: Mapping[str, Any]) -> bool:
    """Whether the family has its own named optimizers (saved under `optimizers.NAME.*`)."""
    return set(optimizers) != {MAIN}


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
    path: str | Path,
    model: torch.nn.Module,
    optimizers: torch.optim.Optimizer | Optimizers,
    counters: dict[str, Any],
    data_rng: torch.Tensor,
    scaler: Any = None,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Write the resumable state atomically. `optimizers`: the run's optimizer, or its named
    optimizers; `data_rng` is the data generator's state at the start of the epoch in progress (its
    order is drawn again on resume); `history` the metrics of the epochs done (metrics.jsonl is
    rebuilt from it on resume)."""
    tensors = state_tensors(model, "model.")
    named = _named(optimizers)
    optimizer_meta: dict[str, str] = {}
    if _several(named):
        plain = {}
        for name, optimizer in named.items():
            optimizer_tensors, plain[name] = _optimizer_tensors(optimizer, f"optimizers.{name}.")
            tensors.update(optimizer_tensors)
        optimizer_meta["vaezoo.optimizers"] = json.dumps(plain)
    else:
        optimizer_tensors, optimizer_plain = _optimizer_tensors(named[MAIN])
        tensors.update(optimizer_tensors)
        optimizer_meta["vaezoo.optimizer"] = json.dumps(optimizer_plain)
    rng_tensors, rng_plain = _rng_state(data_rng)
    tensors.update(rng_tensors)
    metadata = {
        "format": "pt",
        "vaezoo.counters": json.dumps(counters),
        **optimizer_meta,
        "vaezoo.rng": json.dumps(rng_plain),
        "vaezoo.scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else None),
        "vaezoo.history": json.dumps(history or []),
    }
    write_bytes_atomic(path, save_tensors(tensors, metadata=metadata))


COUNTERS = {"epoch": int, "batch": int, "step": int, "loss_sum": float, "seconds": float}


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged: {what} (resume from another copy, or start a new run)")


def _check_optimizer_fields(path: Path, field: str, optimizer_plain: Any) -> None:
    if not (
        isinstance(optimizer_plain, dict)
        and isinstance(optimizer_plain.get("param_groups"), list)
        and isinstance(optimizer_plain.get("plain"), dict)
    ):
        raise _damaged(path, f"{field} does not hold param_groups and plain values")
    for key in optimizer_plain["plain"]:
        index, _, name = str(key).partition(".")
        if not index.isdigit() or not name:
            raise _damaged(path, f"{field}.plain has a bad key {key!r}")


def _check_state_fields(
    path: Path, counters: Any, optimizers_plain: dict[str, Any], rng_plain: Any, history: Any
) -> None:
    """One schema for the JSON parts of a state file: one error naming the first bad field."""
    if not isinstance(counters, dict):
        raise _damaged(path, "vaezoo.counters is not an object")
    for key, kind in COUNTERS.items():
        value = counters.get(key)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or (kind is int and not isinstance(value, int))
            or not value >= 0
            or value != value
            or value == float("inf")
        ):
            raise _damaged(path, f"vaezoo.counters.{key} is {value!r}, expected a non-negative {kind.__name__}")
    for field, optimizer_plain in optimizers_plain.items():
        _check_optimizer_fields(path, field, optimizer_plain)
    numpy_state, python_state = (rng_plain.get(k) if isinstance(rng_plain, dict) else None for k in ("numpy", "python"))
    if not (
        isinstance(numpy_state, list)
        and len(numpy_state) == 3
        and isinstance(python_state, list)
        and len(python_state) == 2
    ):
        raise _damaged(path, "vaezoo.rng does not hold the numpy and python generator states")
    if not (
        isinstance(history, list)
        and all(isinstance(row, dict) and isinstance(row.get("epoch"), int) for row in history)
    ):
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


def _load_optimizer(
    path: Path, optimizer: torch.optim.Optimizer, plain: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str
) -> None:
    """One optimizer's state from its tensors (`INDEX.KEY`, prefix removed) and plain values."""
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or not name:
            raise _damaged(path, f"tensor {prefix}{key} is not an optimizer state")
        per_param.setdefault(int(index), {})[name] = value
    for key, value in plain["plain"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": plain["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: the optimizer state does not match this recipe's model ({str(error).splitlines()[0]})"
        ) from None


def load_state(
    path: str | Path, model: torch.nn.Module, optimizers: torch.optim.Optimizer | Optimizers, scaler: Any = None
) -> tuple[dict[str, Any], torch.Tensor, list[dict[str, Any]]]:
    """Restore weights, optimizers and RNG states from `path`; returns (counters, data_rng, history)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: {path} does not exist (no epoch finished and no stop was saved: start the run again)"
        )
    named = _named(optimizers)
    data = path.read_bytes()
    raw = read_header(data, path).get("__metadata__") or {}
    try:
        counters = json.loads(raw["vaezoo.counters"])
        if _several(named):
            saved = json.loads(raw["vaezoo.optimizers"])
            if not isinstance(saved, dict) or set(saved) != set(named):
                raise _damaged(
                    path,
                    f"vaezoo.optimizers holds {sorted(saved) if isinstance(saved, dict) else saved!r}, this "
                    f"model's optimizers are {sorted(named)}",
                )
            optimizers_plain = {f"vaezoo.optimizers.{name}": saved[name] for name in named}
        else:
            optimizers_plain = {"vaezoo.optimizer": json.loads(raw["vaezoo.optimizer"])}
        rng_plain = json.loads(raw["vaezoo.rng"])
        scaler_state = json.loads(raw.get("vaezoo.scaler", "null"))
        history = json.loads(raw.get("vaezoo.history", "[]"))
    except KeyError as error:
        raise CheckpointError(f"{path} is not a vaezoo run state of this model ({error.args[0]} missing)") from None
    except (ValueError, RecursionError):
        raise _damaged(path, "its metadata is not valid JSON") from None
    _check_state_fields(path, counters, optimizers_plain, rng_plain, history)
    try:
        tensors = load_tensors(data)
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    _check_rng_tensors(path, tensors)
    load_weights(model, {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    for (name, optimizer), plain in zip(named.items(), optimizers_plain.values()):
        prefix = f"optimizers.{name}." if _several(named) else "optimizer."
        _load_optimizer(
            path, optimizer, plain, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, prefix
        )
    if scaler is not None and scaler.is_enabled() and scaler_state:
        scaler.load_state_dict(scaler_state)
    try:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        pos, has_gauss, gauss = rng_plain["numpy"]
        np.random.set_state(
            ("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss))
        )
        version, py_gauss = rng_plain["python"]
        random.setstate((int(version), tuple(tensors["rng.python"].tolist()), py_gauss))
    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
        raise _damaged(path, f"a generator state does not restore ({str(error).splitlines()[0]})") from None
    return counters, tensors["rng.data"], history
