"""Conformance checks for plugin authors: plain functions that build a component or a model family the
way vaezoo does and raise AssertionError with a clear message when it breaks the contract. Use them in
your tests:

    from vaezoo.testing import check_encoder, check_model
    def test_my_encoder():
        check_encoder(MyEncoder, in_shape=(3, 32, 32), latent_dim=8, hidden=[16, 32])
    def test_my_family():
        check_model(MyFamily, in_shape=(3, 32, 32), num_classes=10, width=16)
"""

from __future__ import annotations

import inspect
import math
import random
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from vaezoo.components import Dataset, Loss, LossParts, Model, Prior, checked_groups, family_name, implements
from vaezoo.errors import PluginError
from vaezoo.recipes.resolve import FRAMEWORK_ARGS, MODEL_ARGS

__all__ = [
    "check_signature",
    "check_encoder",
    "check_decoder",
    "check_prior",
    "check_loss",
    "check_dataset",
    "check_model",
    "check_graph_safe",
    "graph_unsafe_reads",
    "component",
]

_SCALARS = (bool, int, float, str)


def _name(factory: Any) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def check_signature(factory: Callable[..., Any], framework: set[str] = FRAMEWORK_ARGS) -> dict[str, inspect.Parameter]:
    """The constructor takes keywords only (no *args/**kwargs, so unknown recipe keys are caught) and
    every recipe key (any parameter but the `framework` arguments vaezoo passes) has a TOML-friendly
    default (bool, int, float, str or a list/tuple of those)."""
    name = _name(factory)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{name}: no inspectable signature ({error})") from error
    for param in params.values():
        assert param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL), (
            f"{name}: takes {param} - recipe keys must be named keyword arguments so unknown keys are detected"
        )
        assert param.kind is not param.POSITIONAL_ONLY, (
            f"{name}: {param.name} is positional-only; vaezoo passes keywords only"
        )
        if param.name in framework:
            continue
        assert param.default is not param.empty, f"{name}: recipe key {param.name!r} needs a default"
        default = param.default
        ok = isinstance(default, _SCALARS) or (
            isinstance(default, (list, tuple)) and all(isinstance(v, _SCALARS) for v in default)
        )
        assert ok, (
            f"{name}: default of {param.name!r} is {default!r}; use a TOML value (bool, int, float, str or a "
            "tuple of those)"
        )
    return dict(params)


def _build(factory: Callable[..., Any], framework: dict[str, Any], kw: dict[str, Any]) -> Any:
    """Build as vaezoo does: the framework arguments the signature accepts, plus the recipe keys."""
    params = check_signature(factory)
    unknown = set(kw) - set(params)
    assert not unknown, (
        f"{_name(factory)}: no recipe key {sorted(unknown)[0]!r} (accepted: "
        f"{', '.join(p for p in params if p not in FRAMEWORK_ARGS) or 'none'})"
    )
    return factory(**{k: v for k, v in framework.items() if k in params}, **kw)


def _assert_shape(what: str, tensor: Any, shape: Sequence[int]) -> None:
    assert isinstance(tensor, Tensor), f"{what}: expected a tensor, got {type(tensor).__name__}"
    assert tuple(tensor.shape) == tuple(shape), f"{what}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}"
    assert torch.isfinite(tensor).all(), f"{what}: has non-finite values"


def _assert_gradients(what: str, module: nn.Module) -> None:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert params, f"{what}: has no trainable parameters"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params), (
        f"{what}: no gradient reaches its parameters"
    )
    for n, p in params:
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{what}: non-finite gradient in {n}"


def check_encoder(
    factory: Callable[..., nn.Module], in_shape: Sequence[int], latent_dim: int, *, batch: int = 2, **kw: Any
) -> nn.Module:
    """Built with `in_shape`, `latent_dim` and `kw`; `forward(x in [0,1])` gives finite
    `(mu, logvar)`, each `(batch, latent_dim)`, and gradients reach its parameters. Returns the encoder."""
    encoder = _build(factory, {"in_shape": tuple(in_shape), "latent_dim": latent_dim}, kw)
    name = _name(factory)
    assert isinstance(encoder, nn.Module), f"{name}: an encoder must be an nn.Module, got {type(encoder).__name__}"
    result = encoder(torch.rand(batch, *in_shape))
    assert isinstance(result, (tuple, list)) and len(result) == 2, f"{name}: forward must return (mu, logvar)"
    mu, logvar = result
    _assert_shape(f"{name} mu", mu, (batch, latent_dim))
    _assert_shape(f"{name} logvar", logvar, (batch, latent_dim))
    (mu.sum() + logvar.sum()).backward()
    _assert_gradients(name, encoder)
    return encoder


def check_decoder(
    factory: Callable[..., nn.Module],
    out_shape: Sequence[int],
    latent_dim: int,
    *,
    in_shape: Sequence[int] | None = None,
    batch: int = 2,
    **kw: Any,
) -> nn.Module:
    """Built with `out_shape`, `latent_dim` (and `in_shape`) and `kw`; `forward(z)` gives finite
    `(batch, *out_shape)` and gradients reach its parameters. Returns the decoder."""
    in_shape = tuple(in_shape) if in_shape is not None else tuple(out_shape)
    decoder = _build(factory, {"out_shape": tuple(out_shape), "in_shape": in_shape, "latent_dim": latent_dim}, kw)
    name = _name(factory)
    assert isinstance(decoder, nn.Module), f"{name}: a decoder must be an nn.Module, got {type(decoder).__name__}"
    out = decoder(torch.randn(batch, latent_dim))
    _assert_shape(f"{name} output", out, (batch, *out_shape))
    out.square().mean().backward()
    _assert_gradients(name, decoder)
    return decoder


class _TinyEncoder(nn.Module):
    """A linear encoder for priors that need one (VampPrior)."""

    def __init__(self, in_shape: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


def check_prior(
    factory: Callable[..., Prior],
    latent_dim: int,
    *,
    in_shape: Sequence[int] = (1, 4, 4),
    encoder: nn.Module | None = None,
    batch: int = 3,
    **kw: Any,
) -> Prior:
    """Built with `latent_dim`, `in_shape` and `kw`, a `vaezoo.Prior` bound to `encoder` (a tiny one
    if not given): `sample(n)` is `(n, latent_dim)`, `log_prob` and `kl` are finite `(batch,)`, the KL is
    differentiable, every trainable parameter of a learnable prior gets a finite gradient through `kl`
    and through `log_prob` (the families train it through one or the other), and the encoder is not
    saved in the prior's state dict. Returns the prior."""
    prior = _build(factory, {"latent_dim": latent_dim, "in_shape": tuple(in_shape)}, kw)
    name = _name(factory)
    assert isinstance(prior, Prior), f"{name}: a prior must subclass vaezoo.Prior, got {type(prior).__name__}"
    encoder = encoder if encoder is not None else _TinyEncoder(in_shape, latent_dim)
    prior.bind(encoder)
    encoder_tensors = {t.data_ptr() for t in encoder.state_dict().values()}
    shared = [k for k, t in prior.state_dict().items() if t.data_ptr() in encoder_tensors]
    assert not shared, (
        f"{name}: bind() registered the encoder as a submodule ({shared[0]} in state_dict); keep a plain reference"
    )
    with torch.no_grad():
        _assert_shape(f"{name}.sample({batch})", prior.sample(batch), (batch, latent_dim))
    mu = torch.randn(batch, latent_dim, requires_grad=True)
    logvar = (0.1 * torch.randn(batch, latent_dim)).requires_grad_()
    z = mu + torch.exp(0.5 * logvar) * torch.randn(batch, latent_dim)
    _assert_shape(f"{name}.log_prob", prior.log_prob(z), (batch,))
    kl = prior.kl(mu, logvar, z)
    _assert_shape(f"{name}.kl", kl, (batch,))
    prior.zero_grad(set_to_none=True)
    kl.sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all(), f"{name}.kl: no finite gradient to the posterior mean"
    _assert_each_parameter_learns(f"{name}.kl", prior)
    if any(param.requires_grad for param in prior.parameters()):
        prior.zero_grad(set_to_none=True)
        log_prob = prior.log_prob(z.detach()).sum()
        if log_prob.requires_grad:
            log_prob.backward()
        _assert_each_parameter_learns(f"{name}.log_prob", prior)
    prior.zero_grad(set_to_none=True)
    return prior


def _assert_each_parameter_learns(what: str, module: nn.Module) -> None:
    """Every trainable parameter of `module` got a finite gradient (the last backward pass reached it)."""
    for param_name, param in module.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, (
                f"{what}: no gradient reaches the parameter {param_name!r}, so training never changes it (use it "
                "in log_prob and kl without detaching it, or register it as a buffer if it is not meant to learn)"
            )
            assert torch.isfinite(param.grad).all(), f"{what}: non-finite gradient in {param_name}"


class _StandardNormal(Prior):
    """N(0, I) with the base class's Monte Carlo KL (the losses' checks need some prior)."""

    def sample(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)


def check_loss(
    loss: Loss | Callable[..., Loss],
    in_shape: Sequence[int] = (3, 8, 8),
    *,
    prior: Prior | None = None,
    batch: int = 2,
    **kw: Any,
) -> Loss:
    """`loss` (an instance, or a class/factory built with `kw`) on images of `in_shape`: decoder outputs
    of `(C * params_per_channel, H, W)` give finite per-image `nll` and `LossParts` of shape `(batch,)`,
    differentiable with respect to the output; `mean_image` is in [0, 1] with the image's shape;
    `kl_weight(None)` is 1. A `discrete` loss must give probabilities over the 256 values of a pixel
    that sum to 1. Returns the loss."""
    if not isinstance(loss, Loss):
        loss = _build(loss, {"in_shape": tuple(in_shape)}, kw)  # in_shape if its constructor asks, as vaezoo does
    name = type(loss).__name__
    assert isinstance(loss, Loss), f"{name}: a loss must subclass vaezoo.Loss"
    k = loss.params_per_channel
    assert isinstance(k, int) and k >= 1, f"{name}: params_per_channel must be a positive int, got {k!r}"
    c, h, w = in_shape
    x = torch.randint(0, 256, (batch, c, h, w)).float() / 255
    out = torch.randn(batch, c * k, h, w, requires_grad=True)
    nll = loss.nll(x, out)
    _assert_shape(f"{name}.nll", nll, (batch,))
    latent_dim = prior.latent_dim if prior is not None else 4
    prior = prior if prior is not None else _StandardNormal(latent_dim=latent_dim)
    mu, logvar = torch.randn(batch, latent_dim), torch.zeros(batch, latent_dim)
    z = mu + torch.randn(batch, latent_dim)
    parts = loss(x, out, mu, logvar, z, prior, step=0)
    assert isinstance(parts, LossParts), f"{name}: forward must return vaezoo.LossParts, got {type(parts).__name__}"
    for field in ("loss", "recon", "kl"):
        _assert_shape(f"{name} parts.{field}", getattr(parts, field), (batch,))
    parts.loss.sum().backward()
    assert out.grad is not None and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0, (
        f"{name}: no finite gradient to the decoder output"
    )
    with torch.no_grad():
        image = loss.mean_image(out)
    _assert_shape(f"{name}.mean_image", image, (batch, c, h, w))
    assert image.min() >= 0 and image.max() <= 1, f"{name}.mean_image: values outside [0, 1]"
    assert loss.kl_weight(None) == 1.0, f"{name}.kl_weight(None) must be 1.0 (evaluation reports the true ELBO)"
    if loss.discrete:
        total = _total_probability(loss)
        assert abs(total - 1.0) < 1e-3, (
            f"{name} is discrete but the 256 values of a pixel have total probability {total:.6f}"
        )
    return loss


def _total_probability(loss: Loss) -> float:
    """Sum over the 256 values of a one-channel 1x1 image of exp(-nll), for random decoder outputs."""
    with torch.no_grad():
        out = torch.randn(1, loss.params_per_channel, 1, 1).expand(256, -1, -1, -1)
        x = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)
        return float(torch.exp(-loss.nll(x, out)).sum())


def check_dataset(
    factory: Callable[..., Dataset], root: str | Path, *, splits: Sequence[str] = ("train", "test"), **kw: Any
) -> Dataset:
    """Built with `root` and `kw` as vaezoo builds it (a path key, `Dataset.path_keys`, relative to
    `root`), a `vaezoo.Dataset` whose `shape` is a `(C, H, W)` a model file can hold (any C; a 1-D
    signal is `(C, 1, L)`) and whose splits load as non-empty uint8 `(N, C, H, W)` images with int64
    `(N,)` labels that vaezoo can draw as pictures; `cache_key()` is a non-empty string. Returns the
    dataset."""
    from vaezoo.data import path_key_value, to_float
    from vaezoo.files.model_header import shape_problem
    from vaezoo.files.png import grid

    name = _name(factory)
    for key in getattr(factory, "path_keys", ()):
        if isinstance(kw.get(key), str) and kw[key]:
            kw = {**kw, key: str(path_key_value(Path(root), kw[key], f"dataset.{key}"))}
    dataset = _build(factory, {"root": Path(root)}, kw)
    assert isinstance(dataset, Dataset), f"{name}: a dataset must subclass vaezoo.Dataset, got {type(dataset).__name__}"
    problem = shape_problem(dataset.shape)
    assert problem is None, f"{name}.shape: {problem}"
    shape = tuple(dataset.shape)
    key = dataset.cache_key()
    assert isinstance(key, str) and key, f"{name}.cache_key() must be a non-empty string"
    for split in splits:
        images, labels = dataset.load(split)
        assert isinstance(images, Tensor) and images.dtype == torch.uint8, (
            f"{name}.load({split!r}): images must be a uint8 tensor"
        )
        assert images.ndim == 4 and tuple(images.shape[1:]) == shape, (
            f"{name}.load({split!r}): images {tuple(images.shape)} do not match shape {shape}"
        )
        assert images.shape[0] > 0, f"{name}.load({split!r}): no images"
        assert isinstance(labels, Tensor) and labels.dtype == torch.int64, (
            f"{name}.load({split!r}): labels must be an int64 tensor"
        )
        assert tuple(labels.shape) == (images.shape[0],), (
            f"{name}.load({split!r}): {labels.shape[0]} labels for {images.shape[0]} images"
        )
        grid(to_float(images[:4]))  # what samples.png and reconstructions.png do with such images
    return dataset


def _assert_images(what: str, images: Any, shape: Sequence[int]) -> None:
    _assert_shape(what, images, shape)
    assert images.min() >= 0 and images.max() <= 1, f"{what}: values outside [0, 1]"


def check_model(
    factory: Callable[..., Model] | str,
    in_shape: Sequence[int] = (3, 32, 32),
    *,
    num_classes: int = 0,
    latent_dim: int | None = None,
    components: dict[str, Any] | None = None,
    batch: int = 3,
    **kw: Any,
) -> Model:
    """A model family built as vaezoo builds it: `in_shape`, `num_classes`, `latent_dim` (if given) and
    the built `components` (encoder, decoder, prior, loss) its constructor names, plus the recipe keys
    `kw`. Checks: a `vaezoo.Model`; `forward(x, y, step=0)` gives per-image `LossParts` of shape
    `(batch,)` (terms too) whose loss is finite and trains its parameters; at `step=None`
    `loss == recon + kl`; `sample` and `reconstruct` give images in [0, 1]; a family that declares
    `cuda_graph = True` reads nothing back to the host in training (`check_graph_safe`); and the optional
    capabilities it has (`log_likelihood`: finite `(batch,)`; `encode` / `decode`: decodes latents to
    images). A conditional model is given labels. `factory` may be a registered family's name (the
    zoo's "vae", say) to check it with your components. Returns the model (in eval mode)."""
    if isinstance(factory, str):
        from vaezoo.plugins.manager import get_registry

        loaded: Callable[..., Model] = get_registry().get("models", factory).load()
        factory = loaded
    name = _name(factory)
    built_on = set(getattr(factory, "model_files", ()))  # loaded models, passed in as keys (no default)
    params = check_signature(factory, MODEL_ARGS | built_on)
    framework: dict[str, Any] = {"in_shape": tuple(in_shape), "num_classes": num_classes, **(components or {})}
    if latent_dim is not None:
        framework["latent_dim"] = latent_dim
    unknown = set(kw) - set(params)
    assert not unknown, (
        f"{name}: no recipe key {sorted(unknown)[0]!r} (accepted: "
        f"{', '.join(p for p in params if p not in MODEL_ARGS) or 'none'})"
    )
    not_taken = sorted(set(components or {}) - set(params))
    assert not not_taken, f"{name} takes no {not_taken[0]} (a recipe with that table is refused too)"
    missing = [
        p for p, param in params.items() if p in MODEL_ARGS and param.default is param.empty and p not in framework
    ]
    assert not missing, (
        f"{name}: needs {missing[0]}: pass it (components={{...}} for encoder/decoder/prior/loss, or latent_dim=)"
    )
    model = factory(**{k: v for k, v in framework.items() if k in params}, **kw)
    assert isinstance(model, Model), f"{name}: a model family must subclass vaezoo.Model, got {type(model).__name__}"
    model.in_shape, model.classes = tuple(in_shape), tuple(f"class-{i}" for i in range(num_classes))
    conditional = bool(model.conditional)
    assert not conditional or num_classes > 0, f"{name} is conditional: check it with num_classes > 0"
    x = torch.randint(0, 256, (batch, *in_shape)).float() / 255
    y = torch.arange(batch) % num_classes if conditional else None

    model.train()
    parts = model(x, y, step=0)
    assert isinstance(parts, LossParts), f"{name}: forward must return vaezoo.LossParts, got {type(parts).__name__}"
    for field in ("loss", "recon", "kl"):
        _assert_shape(f"{name} parts.{field} (step=0)", getattr(parts, field), (batch,))
    assert isinstance(parts.terms, dict), f"{name}: LossParts.terms must be a dict"
    for key, value in parts.terms.items():
        _assert_shape(f"{name} parts.terms[{key!r}]", value, (batch,))
    _check_training(name, model, x, y)
    if model.cuda_graph:
        check_graph_safe(model, x, y)

    model.eval()
    with torch.no_grad():
        parts = model(x, y, step=None)
        for field in ("loss", "recon", "kl"):
            _assert_shape(f"{name} parts.{field} (step=None)", getattr(parts, field), (batch,))
        assert torch.allclose(parts.loss, parts.recon + parts.kl, rtol=1e-4, atol=1e-3), (
            f"{name}: at step=None loss must be the negative ELBO, recon + kl (got loss "
            f"{parts.loss.tolist()}, recon + kl {(parts.recon + parts.kl).tolist()})"
        )
        _assert_images(f"{name}.sample(2)", model.sample(2, None if y is None else y[:2]), (2, *in_shape))
        _assert_images(f"{name}.reconstruct", model.reconstruct(x, y), (batch, *in_shape))
        if implements(model, "log_likelihood"):
            _assert_shape(f"{name}.log_likelihood(k=4)", model.log_likelihood(x, y, k=4), (batch,))
            _check_likelihood(name, model, x, y)
        if implements(model, "encode") or implements(model, "decode"):
            assert implements(model, "encode") and implements(model, "decode"), (
                f"{name}: encode and decode come together"
            )
            latents = model.encode(x, y)
            assert isinstance(latents, Tensor) and latents.shape[0] == batch, (
                f"{name}.encode: expected a tensor with {batch} rows"
            )
            _assert_images(f"{name}.decode(encode(x))", model.decode(latents, y), (batch, *in_shape))
    return model


# What a CUDA graph cannot hold: a tensor's value read back to the host (a sync, and a value frozen into the
# graph), a tensor whose shape depends on values, or a tensor made from host data (`_from_host`: a blocking
# copy to the device; `t.new_full(shape, x)` fills on the device instead).
HOST_READS = frozenset(
    {
        "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__complex__",
        "__contains__", "__repr__", "__format__", "equal", "allclose",
        "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "histc",
    }
)  # fmt: skip


def _from_host(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A tensor made from host data for the model's device: `t.new_tensor(data)`, or `torch.tensor(data,
    device=...)` / `torch.as_tensor(data, device=...)` (without a device it stays on the CPU, a scalar a
    graph holds; from a tensor it is no host data)."""
    if name == "new_tensor":
        return not torch.is_tensor(args[1] if len(args) > 1 else kwargs.get("data"))
    if name in ("tensor", "as_tensor"):
        data = args[0] if args else kwargs.get("data")
        return kwargs.get("device") is not None and not torch.is_tensor(data)
    return False


def _holds_mask(index: Any) -> bool:
    if isinstance(index, (tuple, list)):
        return any(_holds_mask(i) for i in index)
    return torch.is_tensor(index) and index.dtype in (torch.bool, torch.uint8)


class HostReads(TorchFunctionMode):
    """Records every torch call in its scope that reads a tensor's value back to the host (`.item()`,
    `bool(t)`, `if t:`, `int(t)`, `.tolist()`, `.cpu()`, `torch.equal`...) or gives a shape that depends on
    values (`nonzero`, `unique`, `masked_select`, `t[mask]`, `torch.where(mask)`, `bincount`,
    `repeat_interleave` by a tensor) or makes a tensor from host data (`torch.tensor`, `new_tensor`), with
    the file and line that made it: the CPU counterpart of
    `torch.cuda.set_sync_debug_mode("error")`, and stricter (a read of a CPU tensor counts too)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        if (
            name in HOST_READS
            or (name in ("__getitem__", "__setitem__", "index_put", "index_put_") and _holds_mask(args[1:2]))
            or (name == "where" and len(args) + len(kwargs) == 1)
            or (name == "repeat_interleave" and torch.is_tensor(kwargs.get("repeats", args[1:2] or None)))
            or _from_host(name, args, kwargs)
        ):
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            why = (
                " (a tensor made from host data: a copy to the device at every step; use a Python number, "
                "t.new_full(...), or a buffer made in __init__)"
                if _from_host(name, args, kwargs)
                else ""
            )
            self.reads.append(f"{name} at {Path(caller.filename).name}:{caller.lineno}{why}")
        return func(*args, **kwargs)


def _python_values(model: nn.Module) -> dict[tuple[str, str], Any]:
    """The plain Python values held by the modules of `model` (a replayed graph never updates them)."""
    return {
        (name, key): value
        for name, module in model.named_modules()
        for key, value in vars(module).items()
        if isinstance(value, (bool, int, float, str, tuple))
    }


def _numpy_random_position() -> tuple[bytes, int]:
    """Where NumPy's global generator stands: its MT19937 key and the position in it (a draw moves the
    position; the key changes only once every 624 words)."""
    state = np.random.get_state(legacy=False)["state"]
    return state["key"].tobytes(), int(state["pos"])


def graph_unsafe_reads(model: Model, x: Tensor, y: Tensor | None = None, step: int = 1) -> list[str]:
    """What keeps `model`'s default training step (forward at `step`, backward of the mean loss) out of a
    CUDA graph, found on the CPU: host reads and value-dependent shapes (`HostReads`), Python values of its
    modules that the step changed (counters), and draws from Python's or NumPy's random generators."""
    values, py_random, np_random = _python_values(model), random.getstate(), _numpy_random_position()
    watch = HostReads()
    with watch:
        model(x, y, step).loss.mean().backward()
    changed = sorted(
        f"{name}.{key}" for (name, key), v in _python_values(model).items() if values.get((name, key)) != v
    )
    return (
        watch.reads
        + [f"changed the Python value {name}" for name in changed]
        + ["drew from Python's random"] * (random.getstate() != py_random)
        + ["drew from NumPy's random"] * (_numpy_random_position() != np_random)
    )


def check_graph_safe(model: Model, x: Tensor, y: Tensor | None = None) -> None:
    """A family that declares `cuda_graph = True` keeps its promise: `graph_unsafe_reads` finds nothing at
    step 0 and at a late step, and two late steps (KL weights settled) give the same loss from the same
    random draws, so the step depends on the step count only through its KL weights. Then its training
    step can be captured as a CUDA graph and replayed."""
    name = type(model).__name__
    model.train()
    for step in (0, 10**6):
        reads = graph_unsafe_reads(model, x, y, step)
        assert not reads, (
            f"{name} declares cuda_graph = True but its training step at step {step} does what a CUDA graph "
            f"cannot replay: {'; '.join(reads[:5])} (remove it, or declare cuda_graph = False)"
        )
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    losses = []
    for step in (10**6, 10**6 + 1):
        model.load_state_dict(saved)  # buffers a training forward updates (EMA codebooks) as they were
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            losses.append(model(x, y, step).loss)
    model.load_state_dict(saved)
    assert torch.equal(losses[0], losses[1]), (
        f"{name} declares cuda_graph = True but its training loss changes with the step count beyond its KL "
        "weights (a replayed graph would keep the step it was captured at): take the schedule from "
        "kl_weight(step), or declare cuda_graph = False"
    )
    model.zero_grad(set_to_none=True)


TRAINING_STEPS = 2  # a family may step its optimizers in turns: each parameter must learn within these


def _check_training(name: str, model: Model, x: Tensor, y: Tensor | None) -> None:
    """Training as vaezoo runs it: the optimizers of `parameter_groups` (each trainable parameter in
    exactly one), `training_step` for TRAINING_STEPS steps, each `update` the trainer's own (its
    `Updater`, with the default train settings); every parameter gets a finite, non-zero gradient in
    some update (unless `unused_parameters` names it); the optimizers' state round-trips through
    state.safetensors."""
    from vaezoo.recipes.resolve import TRAIN_DEFAULTS
    from vaezoo.trainer.devices import Precision
    from vaezoo.trainer.distributed import World
    from vaezoo.trainer.run import Run
    from vaezoo.trainer.step import Updater, make_optimizers

    named = dict(model.named_parameters())
    try:  # a dict of named ParamGroups of the model's own leaf parameters, each in one group
        groups = checked_groups(model, model.parameter_groups())
    except PluginError as error:
        raise AssertionError(f"{name}: {error}") from error
    owner = {id(param): group_name for group_name, group in groups.items() for param in group.params}
    unused = tuple(model.unused_parameters)
    trainable = {n: p for n, p in named.items() if p.requires_grad and not n.startswith(unused)}
    names = {id(p): n for n, p in trainable.items()}
    left_out = sorted(n for n, p in trainable.items() if id(p) not in owner)
    assert not left_out, (
        f"{name}: parameter {left_out[0]} is in no optimizer of parameter_groups() (or declare it in unused_parameters)"
    )
    settings = {**TRAIN_DEFAULTS, "lr": 1e-4}
    recipe = {"model": {"name": family_name(model)}, "train": settings}
    fp32 = Precision("fp32", None)
    run = Run(model, recipe, train_images=x, test_images=x, out_dir=Path(), device=x.device, precision=fp32)
    run.optimizers = make_optimizers(model, run.settings)
    run.scaler = torch.amp.GradScaler(x.device.type, enabled=False)
    updater = Updater(run, World())
    updater.batch = updater.global_batch = len(x)
    learned: set[str] = set()

    def update(group_name: str, per_image_loss: Tensor) -> None:
        try:
            updater(group_name, per_image_loss)
        except PluginError as error:  # an optimizer it does not declare, a loss that is not per image
            raise AssertionError(f"{name}: {error}") from error
        for group in run.optimizers[group_name].param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient in optimizer {group_name!r}"
                    if param.grad.abs().sum() > 0 and id(param) in names:
                        learned.add(names[id(param)])

    for step in range(TRAINING_STEPS):
        parts = model.training_step(x, y, step, update)
        assert isinstance(parts, LossParts), (
            f"{name}: training_step must return vaezoo.LossParts, got {type(parts).__name__}"
        )
        assert updater.calls, f"{name}: training_step called update() for none of its optimizers in the first step"
    never = sorted(n for n in trainable if n not in learned)
    assert not never, (
        f"{name}: parameter {never[0]} gets no gradient from the update() calls of {TRAINING_STEPS} training "
        "steps. Stricter since vaezoo 0.3: every trainable parameter must be trained through update() (0.2 "
        "asked for a gradient in any one parameter), since vaezoo saves, resumes and averages over ranks only "
        "what its optimizers step. A parameter that an optimizer of the family's own steps inside forward (a "
        "discriminator's, say) goes into a group of its own in parameter_groups(), stepped by training_step "
        "with update(name, per_image_loss); one that nothing trains is named in unused_parameters "
        "(docs/plugins.md, Porting a 0.2 plugin)"
    )
    _check_state_round_trip(name, model, run.optimizers)


def _check_state_round_trip(name: str, model: Model, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Weights and every optimizer's state, saved to a state.safetensors and loaded into fresh
    optimizers, are exactly what they were."""
    import copy
    import tempfile

    from vaezoo.files.train_state import load_state, save_state
    from vaezoo.recipes.resolve import TRAIN_DEFAULTS
    from vaezoo.trainer.settings import TrainSettings
    from vaezoo.trainer.step import make_optimizers

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.safetensors"
        save_state(
            path,
            model,
            optimizers,
            {"epoch": 0, "batch": 0, "step": TRAINING_STEPS, "loss_sum": 0.0, "seconds": 0.0},
            torch.Generator().get_state(),
        )
        twin = copy.deepcopy(model)
        fresh = make_optimizers(twin, TrainSettings(**{**TRAIN_DEFAULTS, "lr": 1e-4}))
        rng = torch.get_rng_state()
        load_state(path, twin, fresh)
        torch.set_rng_state(rng)
    for group_name, optimizer in optimizers.items():
        ours, theirs = optimizer.state_dict(), fresh[group_name].state_dict()
        for index, values in ours["state"].items():
            for key, value in values.items():
                other = theirs["state"].get(index, {}).get(key)
                same = torch.equal(value, other) if torch.is_tensor(value) else value == other
                assert same, (
                    f"{name}: optimizer {group_name!r} state {index}.{key} does not round-trip through "
                    "state.safetensors"
                )


LIKELIHOOD_REPEATS = 64
LIKELIHOOD_SINCE_03 = (
    "Stricter since vaezoo 0.3, which checks log_likelihood against the ELBO (0.2 checked its shape only): "
    "return the importance-weighted bound logsumexp_k(log p(x, z_k) - log q(z_k | x)) - log k of the same "
    "model that forward(x, step=None) gives the ELBO of, or do not define log_likelihood"
)


def _check_likelihood(name: str, model: Model, x: Tensor, y: Tensor | None) -> None:
    """`log_likelihood` is the importance-weighted bound of the model's ELBO: with k=1 it averages to
    the ELBO (-loss at step None), and with more samples it is not below it by more than noise."""
    assert model.objective == "elbo", (
        f"{name}: log_likelihood is for ELBO families; objective {model.objective!r} has none"
    )
    elbo = torch.stack([-model(x, y, step=None).loss.double() for _ in range(LIKELIHOOD_REPEATS)])
    one = torch.stack([model.log_likelihood(x, y, k=1).double() for _ in range(LIKELIHOOD_REPEATS)])
    noise = (elbo.var(0) / LIKELIHOOD_REPEATS + one.var(0) / LIKELIHOOD_REPEATS).sqrt().max().item()
    gap = (one.mean(0) - elbo.mean(0)).abs().max().item()
    assert gap <= 5 * noise + 1e-3 * elbo.abs().mean().item() + 1e-3, (
        f"{name}: log_likelihood(k=1) averages {one.mean().item():.3f} but the ELBO averages "
        f"{elbo.mean().item():.3f} (difference {gap:.3f}, noise {noise:.3f}): with one sample it must be the "
        f"ELBO. {LIKELIHOOD_SINCE_03}"
    )
    many = torch.stack([model.log_likelihood(x, y, k=16).double() for _ in range(LIKELIHOOD_REPEATS // 8)]).mean(0)
    assert (many >= elbo.mean(0) - 5 * noise - 1e-3 * elbo.abs().mean().item() - 1e-3).all(), (
        f"{name}: log_likelihood(k=16) {many.tolist()} is below the ELBO {elbo.mean(0).tolist()}: an "
        f"importance-weighted bound is never worse than the ELBO. {LIKELIHOOD_SINCE_03}"
    )


def component(
    kind: str,
    name: str,
    *,
    in_shape: Sequence[int] = (3, 32, 32),
    latent_dim: int | None = None,
    loss: Loss | None = None,
    **kw: Any,
) -> Any:
    """A registered component (`kind` one of encoder, decoder, prior, loss, dataset) built by name as a
    recipe builds it: the recipe keys `kw` checked and defaulted, `in_shape` and `latent_dim` passed,
    and for a decoder `out_shape` from `loss.params_per_channel`. For `check_model(components=...)`."""
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import decoder_out_shape, instantiate
    from vaezoo.recipes.resolve import COMPONENTS, resolve_component

    assert kind in COMPONENTS, f"unknown component kind {kind!r}: use one of {', '.join(COMPONENTS)}"
    table = resolve_component("test", kind, COMPONENTS[kind], {"name": name, **kw})
    shapes: dict[str, Any] = {"in_shape": tuple(in_shape)}
    if latent_dim is not None:
        shapes["latent_dim"] = latent_dim
    if kind == "decoder":
        shapes["out_shape"] = decoder_out_shape(in_shape, loss)
    return instantiate(get_registry().get(COMPONENTS[kind], name).load(), table, shapes, kind)
