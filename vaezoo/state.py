"""state.safetensors: what `--resume` needs to continue a run exactly (weights, optimizer, counters,
RNG states of torch, numpy and python, and the data order of the current epoch)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vaezoo.checkpoint import load_weights, read_header, state_tensors
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


def save_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, counters: dict[str, Any], data_rng: torch.Tensor, scaler: Any = None) -> None:
    """Write the resumable state atomically. `data_rng` is the data generator's state at the start
    of the epoch in progress (its order is drawn again on resume)."""
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
        "vaezoo.scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    write_bytes_atomic(path, save_tensors(tensors, metadata=metadata))


def load_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Restore weights, optimizer and RNG states from `path`; returns (counters, data_rng)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (was the run started with this vaezoo?)")
    data = path.read_bytes()
    raw = read_header(data, path).get("__metadata__") or {}
    try:
        counters = json.loads(raw["vaezoo.counters"])
        optimizer_plain = json.loads(raw["vaezoo.optimizer"])
        rng_plain = json.loads(raw["vaezoo.rng"])
        scaler_state = json.loads(raw.get("vaezoo.scaler", "null"))
        tensors = load_tensors(data)
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a vaezoo run state ({error!r})") from None
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    load_weights(model, {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    for key, value in optimizer_plain["plain"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": optimizer_plain["param_groups"]})
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: the optimizer state does not match this recipe's model ({error})") from None
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    pos, has_gauss, gauss = rng_plain["numpy"]
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = rng_plain["python"]
    random.setstate((version, tuple(tensors["rng.python"].tolist()), py_gauss))
    return counters, tensors["rng.data"]
