"""Samplers fitted after training (`vaezoo.Sampler` plugins): fit one to a trained model's codes of the
training split, keep it beside the model file, and decode its draws in place of the prior's."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import Model, Sampler, implements
from vaezoo.errors import CheckpointError, VaezooError
from vaezoo.files.model_header import file_sha256
from vaezoo.files.sampler_file import load_sampler_tensors, read_sampler_record, sampler_path, save_sampler
from vaezoo.recipes.resolve import parse_set

PRIOR = "prior"  # not a plugin: the model's own `sample`


def require_codes(model: Model) -> None:
    """A fitted sampler draws codes for `decode`: the family must `encode` and `decode`."""
    if not (implements(model, "encode") and implements(model, "decode")):
        family = model.recipe.get("model", {}).get("name", type(model).__name__)
        raise VaezooError(
            f"model family {family!r} has no encode/decode, so no sampler can be fitted to its codes: "
            "use --sampler prior"
        )


def _build(name: str, dim: int, keys: Mapping[str, Any], recipe: str) -> tuple[Sampler, dict[str, Any], Any]:
    """The registered sampler `name` built for codes of size `dim`, its resolved keys and its entry."""
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import instantiate
    from vaezoo.recipes.resolve import resolve_component

    entry = get_registry().get("samplers", name)
    table = resolve_component(recipe, "sampler", "samplers", {**keys, "name": name}, framework={"dim"})
    sampler = instantiate(entry.load(), table, {"dim": dim}, "sampler")
    if not isinstance(sampler, Sampler):
        raise VaezooError(f"sampler {name!r} ({entry.plugin.distribution}) does not build a vaezoo.Sampler")
    return sampler, {k: v for k, v in table.items() if k != "name"}, entry


@torch.no_grad()
def training_codes(model: Model, images: Tensor, labels: Tensor | None, batch_size: int) -> Tensor:
    """`(N, D)` float64 codes (`model.encode`, flattened) of uint8 `images`, on the CPU."""
    from vaezoo.data import batches

    device = next(model.parameters()).device
    codes = []
    for x, y in batches(images, batch_size, labels if model.conditional else None):  # x: float in [0, 1]
        z = model.encode(x.to(device), None if y is None else y.to(device))
        codes.append(z.reshape(len(x), -1).double().cpu())
    return torch.cat(codes)


def fit_sampler(
    model_path: str | Path,
    name: str,
    *,
    sets: Iterable[str] = (),
    data_dir: str | os.PathLike[str] | None = None,
    limit: int = 0,
    device: str = "cpu",
    paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fit sampler `name` (`sets`: its `KEY=VALUE` keys) to the training split's codes of a saved
    model and write it beside the model file; returns what was written."""
    from vaezoo.api import load_split_images
    from vaezoo.loading import load
    from vaezoo.sharing.hub import local_model_path

    if name == PRIOR:
        raise VaezooError(
            "the prior sampler is the model's own and needs no fitting: fit another (vaezoo list samplers)"
        )
    path = local_model_path(model_path)
    model = load(path, device=device)
    require_codes(model)
    keys: dict[str, Any] = {}
    for item in sets:
        key, value = parse_set(item)
        if len(key) != 1:
            raise VaezooError(f"--set {item!r}: a sampler's keys are plain names (--set n_components=10)")
        keys[key[0]] = value
    images, labels = load_split_images(model, "train", data_dir, limit, paths)
    codes = training_codes(model, images, labels, model.recipe["train"]["eval_batch_size"])
    if not bool(torch.isfinite(codes).all()):
        raise VaezooError(f"{path}: the model's codes of the training images are not finite")
    shape = code_shape(model)
    sampler, resolved, entry = _build(name, codes.shape[1], keys, model.recipe.get("name", "model"))
    try:
        sampler.fit(codes)
    except (ValueError, torch.linalg.LinAlgError) as error:
        raise VaezooError(f"sampler {name!r} could not be fitted to {len(codes)} codes: {error}") from error
    state = sampler.state_dict()
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise VaezooError(f"sampler {name!r} fitted to non-finite values: not saved")
    out = sampler_path(path, name)
    log_prob = getattr(sampler, "log_prob", None)
    fit = float(log_prob(codes).mean()) if callable(log_prob) else None
    record = {
        "name": entry.name,
        "plugin": entry.plugin.name,
        "distribution": entry.plugin.distribution,
        "version": entry.plugin.version,
        "keys": resolved,
        "code_shape": shape,
        "model_sha256": file_sha256(path),
        "fitted_on": {"split": "train", "images": len(images)},
        "mean_log_likelihood": fit if fit is not None and math.isfinite(fit) else None,
    }
    save_sampler(out, sampler, record)
    return {"path": out, **record}


@torch.no_grad()
def code_shape(model: Model) -> list[int]:
    """The shape of one of the model's codes (what `encode` gives per image, and `decode` takes)."""
    device = next(model.parameters()).device
    blank = torch.zeros(1, *model.in_shape, device=device)
    label = torch.zeros(1, dtype=torch.long, device=device) if model.conditional else None
    return list(model.encode(blank, label).shape[1:])


def load_fitted_sampler(model: Model, model_path: Path, name: str) -> tuple[Sampler, list[int]]:
    """The sampler `name` fitted to the model file `model_path` (read from beside it), and the shape
    of one code."""
    path = sampler_path(model_path, name)
    if not path.exists():
        raise VaezooError(
            f"no {name!r} sampler is fitted to {model_path}: `vaezoo fit-sampler {model_path} {name} --data-dir DATA` "
            f"fits one (it writes {path.name} beside the model)"
        )
    record = read_sampler_record(path)
    if record["name"] != name:
        raise CheckpointError(f"{path} holds sampler {record['name']!r}, not {name!r}")
    if record["model_sha256"] != file_sha256(model_path):
        raise CheckpointError(
            f"{path} was fitted to another model file than {model_path} (sha256 differs): fit it again with "
            f"`vaezoo fit-sampler {model_path} {name}`"
        )
    shape = code_shape(model)
    if record["code_shape"] != shape:
        raise CheckpointError(
            f"{path} holds codes of shape {record['code_shape']}, but the model's codes are {shape}: fit it "
            f"again with `vaezoo fit-sampler {model_path} {name}`"
        )
    dim = math.prod(record["code_shape"])
    try:
        sampler, _, _ = _build(name, dim, record["keys"], model.recipe.get("name", "model"))
    except VaezooError as error:
        raise CheckpointError(f"{path}: its sampler does not build here: {error}") from error
    sampler.load_state_dict(load_sampler_tensors(path, sampler.state_dict()))
    return sampler.eval(), record["code_shape"]


def fitted_codes(
    model_name: str | Path,
    model: Model,
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    notice: Any = print,
) -> Any:
    """`codes(count, temperature)` for `sample_images`: draws of the sampler `name` fitted to the model
    file `model_name` (a path, `hf://` name or URL; `model` is it loaded), fitted now on first use
    (reading the training split from `data_dir`) and kept beside the file."""
    from vaezoo.plugins.manager import get_registry
    from vaezoo.sharing.hub import local_model_path

    require_codes(model)
    get_registry().get("samplers", name)  # an unknown name is one line, before anything is said or read
    path = local_model_path(model_name)
    if not sampler_path(path, name).exists():
        notice(f"fitting the {name} sampler to the training codes of {path} (once: it is kept beside the model)")
        fit_sampler(path, name, data_dir=data_dir, device=str(next(model.parameters()).device))
    sampler, shape = load_fitted_sampler(model, path, name)
    device = next(model.parameters()).device
    return lambda count, temperature: sampled_codes(sampler, count, shape, temperature, device)


def sampled_codes(sampler: Sampler, n: int, code_shape: list[int], temperature: float, device: torch.device) -> Tensor:
    """`n` codes drawn from a fitted sampler, shaped and placed for `Model.decode`."""
    codes = sampler.sample(n, temperature)
    if not (isinstance(codes, Tensor) and codes.shape == (n, math.prod(code_shape)) and codes.is_floating_point()):
        raise VaezooError(
            f"sampler {type(sampler).__name__}.sample({n}) must return a float ({n}, {math.prod(code_shape)}) tensor"
        )
    return codes.to(device=device, dtype=torch.float32).reshape(n, *code_shape)
