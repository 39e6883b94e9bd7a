"""state.safetensors: what `--resume` needs to continue a run exactly (weights, optimizer, counters,
RNG states of torch, numpy and python, the data order of the current epoch, and the metrics history).
It is the run folder's commit: written first at each epoch end, atomically."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vaezoo.errors import CheckpointError, first_line
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.model_file import load_weights, state_tensors
from vaezoo.files.model_header import read_header, shown

Optimizers = Mapping[str, torch.optim.Optimizer]
MAIN = "model"  # the optimizer of a family with one: saved as vaezoo 0.2 saved it (`optimizer.*`)


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, prefix: str = "optimizer."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's tensors (`PREFIX.INDEX.KEY`) and its JSON part: param_groups, the plain
    per-parameter values (`INDEX.KEY`) and the indices of the parameters that have a state."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain, "stepped": sorted(state["state"])}


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
    identity = _identity(model)
    metadata = {
        "format": "pt",
        **({"vaezoo.run": json.dumps(identity)} if identity else {}),
        "vaezoo.counters": json.dumps(counters),
        **optimizer_meta,
        "vaezoo.rng": json.dumps(rng_plain),
        "vaezoo.scaler": json.dumps(scaler.state_dict() if scaler is not None and scaler.is_enabled() else None),
        "vaezoo.history": json.dumps(history or []),
    }
    write_bytes_atomic(path, save_tensors(tensors, metadata=metadata))


COUNTERS = {"epoch": int, "batch": int, "step": int, "loss_sum": float, "seconds": float}
OPTIONAL_COUNTERS = {"skipped": int}  # absent in states of vaezoo 0.2
DEVICE_FLAGS = ("capturable", "fused", "foreach")  # set by the device and step mode: a resume keeps this run's
SET_ON_RESUME = ("lr", "weight_decay")  # a resume gives the optimizers the recipe's (vaezoo.trainer.loop.prepare)
NON_NEGATIVE_STATE = ("step", "exp_avg_sq", "max_exp_avg_sq")  # Adam's step count and second moments
SCALER_NUMBERS = ("scale", "growth_factor", "backoff_factor", "growth_interval")


def _identity(model: torch.nn.Module) -> dict[str, str]:
    """The recipe and model family a state belongs to (empty for a model built without a recipe)."""
    recipe = getattr(model, "recipe", None) or {}
    family = recipe.get("model", {}).get("name") if isinstance(recipe.get("model"), Mapping) else None
    return {"recipe": recipe["name"], "model": family} if isinstance(recipe.get("name"), str) and family else {}


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged: {what} (resume from another copy, or start a new run)")


def _is_index(text: str) -> bool:
    """Whether `text` is a parameter index as vaezoo writes it (ASCII digits)."""
    return text.isascii() and text.isdigit()


def _check_optimizer_fields(path: Path, field: str, optimizer_plain: Any) -> None:
    if not (
        isinstance(optimizer_plain, dict)
        and isinstance(optimizer_plain.get("param_groups"), list)
        and isinstance(optimizer_plain.get("plain"), dict)
    ):
        raise _damaged(path, f"{field} does not hold param_groups and plain values")
    stepped = optimizer_plain.get("stepped", [])
    if not (isinstance(stepped, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in stepped)):
        raise _damaged(path, f"{field}.stepped is not a list of parameter indices")
    for key in optimizer_plain["plain"]:
        index, _, name = str(key).partition(".")
        if not _is_index(index) or not name:
            raise _damaged(path, f"{field}.plain has a bad key {key!r}")


def _finite_number(value: Any) -> bool:
    """A JSON number that is finite (an integer below 2^63)."""
    if isinstance(value, bool):
        return False
    return math.isfinite(value) if isinstance(value, float) else isinstance(value, int) and abs(value) < 2**63


def _check_state_fields(
    path: Path,
    counters: Any,
    optimizers_plain: dict[str, Any],
    rng_plain: Any,
    history: Any,
    scaler_state: Any,
    batches: int | None,
) -> None:
    """One schema for the JSON parts of a state file: one error naming the first bad field
    (`batches`: the run's batches per epoch, above any saved position in an epoch)."""
    if not isinstance(counters, dict):
        raise _damaged(path, "vaezoo.counters is not an object")
    fields = {**COUNTERS, **{key: kind for key, kind in OPTIONAL_COUNTERS.items() if key in counters}}
    for key, kind in fields.items():
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
    if batches is not None and counters["batch"] >= batches:
        raise _damaged(
            path, f"vaezoo.counters.batch is {counters['batch']}, but an epoch of this run has {batches} batches"
        )
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
    epochs = [row["epoch"] for row in history]
    if history and (len(history) != counters["epoch"] or epochs != list(range(1, len(history) + 1))):
        raise _damaged(
            path, f"vaezoo.history holds epochs {shown(epochs)}, but vaezoo.counters.epoch is {counters['epoch']}"
        )
    for row in history:
        bad = _history_problem(row)
        if bad is not None:
            raise _damaged(path, f"vaezoo.history of epoch {row['epoch']} has {bad}")
    if scaler_state is not None and not (
        isinstance(scaler_state, dict)
        and all(_finite_number(scaler_state.get(key)) and scaler_state[key] > 0 for key in SCALER_NUMBERS)
        and _finite_number(scaler_state.get("_growth_tracker"))
    ):
        raise _damaged(path, "vaezoo.scaler is not a gradient scaler's state")


TEXT_METRICS = {"precision"}  # the metrics of a history row that are short text, not numbers


def _history_problem(row: Mapping[str, Any]) -> str | None:
    """What is wrong with a metrics row of the history (every value a finite number, a table of them
    such as test_terms, or one of TEXT_METRICS), or None."""
    for key, value in row.items():
        if key in TEXT_METRICS:
            ok = isinstance(value, str) and len(value) <= 16 and value.isprintable()
        elif isinstance(value, Mapping):
            ok = len(value) <= 1000 and all(isinstance(k, str) and _finite_number(v) for k, v in value.items())
        else:
            ok = _finite_number(value)
        if not ok:
            return f"a {shown(key)} that is not a finite number"
    return None


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


def _plain_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _checked_groups(path: Path, label: str, optimizer: torch.optim.Optimizer, saved: list[Any]) -> list[dict]:
    """The param_groups to load: this run's, with the saved learning rate and weight decay. Every saved
    setting must be one this run's optimizer has, and equal to its value, except the device flags
    (this run's are kept) and SET_ON_RESUME (a positive finite lr, a finite weight decay >= 0)."""
    own = optimizer.state_dict()["param_groups"]
    if len(saved) != len(own):
        raise _damaged(path, f"{label} has {len(saved)} param_groups, this run's optimizer has {len(own)}")
    groups = []
    for index, (mine, theirs) in enumerate(zip(own, saved)):
        where = f"{label}.param_groups[{index}]"
        if not isinstance(theirs, dict):
            raise _damaged(path, f"{where} is not an object")
        unknown = sorted(set(theirs) - set(mine))
        if unknown:
            raise _damaged(path, f"{where} has a setting {shown(unknown[0])} that this run's optimizer does not have")
        for key, value in theirs.items():
            if key in DEVICE_FLAGS:
                continue
            if key in SET_ON_RESUME:
                if not (_finite_number(value) and (value > 0 if key == "lr" else value >= 0)):
                    raise _damaged(path, f"{where}.{key} is {shown(value)}, not a valid {key}")
            elif value != _plain_json(mine[key]):
                raise _damaged(path, f"{where}.{key} is {shown(value)}, this run's is {shown(_plain_json(mine[key]))}")
        groups.append({**mine, **{key: theirs[key] for key in SET_ON_RESUME if key in theirs}})
    return groups


Layout = dict[str, tuple[bool, torch.dtype] | type]  # state key -> (shaped like the parameter, dtype) or plain type


def _layouts(optimizer: torch.optim.Optimizer) -> list[Layout]:
    """For each parameter index, the state this optimizer creates at its first step, as torch's
    optimizer of this class and these settings makes it: one probe step (on the CPU, without the
    device flags, which vaezoo sets itself) per param group and parameter dtype."""
    probes: dict[tuple[int, torch.dtype], Layout] = {}
    layouts = []
    for number, group in enumerate(optimizer.param_groups):
        settings = {key: group[key] for key in optimizer.defaults if key in group}
        settings |= {key: (False if key == "capturable" else None) for key in DEVICE_FLAGS if key in settings}
        for param in group["params"]:
            if (number, param.dtype) not in probes:
                probe = torch.zeros(2, dtype=param.dtype, requires_grad=True)
                probe.grad = torch.zeros_like(probe)
                stepped = type(optimizer)([probe], **settings)
                stepped.step()
                probes[number, param.dtype] = {
                    key: (tuple(value.shape) == (2,), value.dtype) if torch.is_tensor(value) else type(value)
                    for key, value in stepped.state[probe].items()
                }
            layouts.append(probes[number, param.dtype])
    return layouts


def _checked_value(path: Path, where: str, key: str, value: Any, expected: Any, param: torch.Tensor) -> None:
    """One saved per-parameter value against the layout torch's optimizer gives it."""
    if isinstance(expected, type):
        if type(value) is not expected or (isinstance(value, float) and not math.isfinite(value)):
            raise _damaged(path, f"{where} is {shown(value)}, expected a finite {expected.__name__}")
        return
    if not torch.is_tensor(value):
        raise _damaged(path, f"{where} is {shown(value)}, expected a tensor")
    like_param, dtype = expected
    shape = tuple(param.shape) if like_param else ()
    if tuple(value.shape) != shape or value.dtype != dtype:
        raise _damaged(
            path,
            f"tensor {where} is {str(value.dtype)[6:]} of shape {tuple(value.shape)}, expected {str(dtype)[6:]} "
            f"of shape {shape}",
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise _damaged(path, f"tensor {where} holds NaN or infinite values")
    if key in NON_NEGATIVE_STATE and bool((value < 0).any()):
        raise _damaged(path, f"tensor {where} holds negative values")
    if key == "step" and value.is_floating_point() and not bool((value == value.round()).all()):
        raise _damaged(path, f"tensor {where} is not a whole number of steps")


def _checked_optimizer(
    path: Path,
    label: str,
    prefix: str,
    optimizer: torch.optim.Optimizer,
    saved: dict[str, Any],
    tensors: dict[tuple[int, str], torch.Tensor],
) -> dict[str, Any]:
    """The state dict to load into `optimizer`, from its saved JSON part and tensors (by parameter index
    and key), checked against what this run's optimizer would hold: the same param groups and settings,
    and for each parameter either no state (never stepped) or exactly the keys, shapes and dtypes torch
    gives it."""
    groups = _checked_groups(path, label, optimizer, saved["param_groups"])
    params = [param for group in optimizer.param_groups for param in group["params"]]
    per_param: dict[int, dict[str, Any]] = {}
    for (index, key), value in tensors.items():
        per_param.setdefault(index, {})[key] = value
    for key, value in saved["plain"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    stray = sorted(index for index in per_param if index >= len(params))
    if stray:
        raise _damaged(path, f"{label} has a state for parameter {stray[0]}, this run's has {len(params)} parameters")
    stepped = saved.get("stepped")  # absent in states of vaezoo 0.3.0 and older
    if stepped is not None and stepped != sorted(per_param):
        missing = sorted(set(stepped) - set(per_param))
        what = f"the state of parameter {missing[0]} is missing" if missing else "it has states of unstepped parameters"
        raise _damaged(path, f"{label}: {what}")
    layouts = _layouts(optimizer)
    for index, values in sorted(per_param.items()):
        layout = layouts[index]
        missing, extra = sorted(set(layout) - set(values)), sorted(set(values) - set(layout))
        if missing or extra:
            which = f"lacks {missing[0]}" if missing else f"has an unexpected {shown(extra[0])}"
            raise _damaged(path, f"{label}: the state of parameter {index} {which}")
        for key, value in values.items():
            _checked_value(path, f"{prefix}{index}.{key}", key, value, layout[key], params[index])
    return {"state": per_param, "param_groups": groups}


RNG_TENSORS = ("rng.torch", "rng.data", "rng.numpy", "rng.python")


def _sorted_tensors(
    path: Path, tensors: dict[str, torch.Tensor], named: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[tuple[int, str], torch.Tensor]]]:
    """The model's tensors (prefix removed) and each optimizer's (by parameter index and key) of a
    state file; any other tensor than those and the RNG states is refused. An optimizer's tensor is
    `optimizers.NAME.INDEX.KEY` (`optimizer.INDEX.KEY` for a family's one "model" optimizer): split
    from the right, so that a name with dots reads back as itself."""
    several = _several(named)
    model: dict[str, torch.Tensor] = {}
    optimizers: dict[str, dict[tuple[int, str], torch.Tensor]] = {name: {} for name in named}
    for key, tensor in tensors.items():
        if key.startswith("model."):
            model[key[len("model.") :]] = tensor
            continue
        if key in RNG_TENSORS or (key.startswith("rng.cuda.") and key[len("rng.cuda.") :].isdigit()):
            continue
        head, _, rest = key.partition(".")
        parts = rest.rsplit(".", 2) if several else [MAIN, *rest.split(".", 1)]
        if head == ("optimizers" if several else "optimizer") and len(parts) == 3 and parts[0] in named:
            name, index, state_key = parts
            if _is_index(index) and state_key:
                optimizers[name][int(index), state_key] = tensor
                continue
        raise _damaged(path, f"it holds a tensor {shown(key)} that is no part of this run's state")
    return model, optimizers


def _check_model_tensors(path: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The model's tensors: the names and shapes of this model (load_weights), its dtypes, finite."""
    load_weights(model, tensors, path, copy=False)
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.dtype != expected[name].dtype:
            raise _damaged(path, f"tensor model.{name} is {tensor.dtype}, the model's is {expected[name].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _damaged(path, f"tensor model.{name} holds NaN or infinite values")


def _check_identity(path: Path, raw: Mapping[str, str], model: torch.nn.Module) -> None:
    """A state records the recipe and family of its run (not those of vaezoo 0.3.0 and older): they must be
    this run's."""
    if "vaezoo.run" not in raw:
        return
    try:
        saved = json.loads(raw["vaezoo.run"])
    except (ValueError, RecursionError) as error:
        raise _damaged(path, "metadata vaezoo.run is not valid JSON") from error
    if not (isinstance(saved, dict) and all(isinstance(saved.get(key), str) for key in ("recipe", "model"))):
        raise _damaged(path, "metadata vaezoo.run does not name a recipe and a model family")
    own = _identity(model)
    if own and {key: saved[key] for key in own} != own:
        raise CheckpointError(
            f"{path} is the state of a run of recipe {shown(saved['recipe'])} (model {shown(saved['model'])}), "
            f"not of this run's recipe {own['recipe']!r} (model {own['model']!r}): resume the folder it was "
            "saved in, or start a new run"
        )


def load_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizers: torch.optim.Optimizer | Optimizers,
    scaler: Any = None,
    batches: int | None = None,
) -> tuple[dict[str, Any], torch.Tensor, list[dict[str, Any]]]:
    """Restore weights, optimizers and RNG states from `path`; returns (counters, data_rng, history).
    Everything is checked against this run before anything is restored (its recipe and family, the
    model's tensors, each optimizer's settings and state as torch would create them, the counters
    within `batches` per epoch, a finite history, no other tensor): the first mismatch is a
    CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: {path} does not exist (no epoch finished and no stop was saved: start the run again)"
        )
    named = _named(optimizers)
    data = path.read_bytes()
    raw = read_header(data, path).get("__metadata__") or {}
    _check_identity(path, raw, model)
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
        raise CheckpointError(f"{path} is not a vaezoo run state of this model ({error.args[0]} missing)") from error
    except (ValueError, RecursionError) as error:
        raise _damaged(path, "its metadata is not valid JSON") from error
    _check_state_fields(path, counters, optimizers_plain, rng_plain, history, scaler_state, batches)
    try:
        tensors = load_tensors(data)
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {first_line(error)}") from error
    _check_rng_tensors(path, tensors)
    model_tensors, optimizer_tensors = _sorted_tensors(path, tensors, named)
    _check_model_tensors(path, model, model_tensors)
    several = _several(named)
    states = {
        name: _checked_optimizer(
            path,
            f"optimizer {name!r}" if several else "the optimizer",
            f"optimizers.{name}." if several else "optimizer.",
            optimizer,
            plain,
            optimizer_tensors[name],
        )
        for (name, optimizer), plain in zip(named.items(), optimizers_plain.values())
    }
    load_weights(model, model_tensors, path)
    for name, optimizer in named.items():
        optimizer.load_state_dict(states[name])
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
        raise _damaged(path, f"a generator state does not restore ({first_line(error)})") from error
    return counters, tensors["rng.data"], history
