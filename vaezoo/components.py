"""The interfaces a plugin implements. Shapes: images are `(B, C, H, W)` floats in [0, 1]; latents
are `(B, latent_dim)`; class labels are `(B,)` int64. Every constructor takes keyword arguments only.

A `Model` is a whole architecture (a model family); `Encoder`, `Decoder`, `Prior` and `Loss` are the
parts of the classic VAE family `vae`, which other families may reuse."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vaezoo.errors import PluginError
from vaezoo.plugins.kinds import recipe_family

if TYPE_CHECKING:
    from vaezoo.plugins.registry import Entry

LOG_2PI = math.log(2 * math.pi)
_EMPTY: Mapping[str, Any] = MappingProxyType({})  # the default of Model's mappings that vaezoo sets (read-only)


class Encoder(nn.Module):
    """Built with `in_shape=(C, H, W)`, `latent_dim` and recipe keys; `forward(x) -> (mu, logvar)`."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """The posterior's mean and log-variance for images `x`, each `(B, latent_dim)`."""
        raise NotImplementedError


class Decoder(nn.Module):
    """Built with `out_shape=(C * k, H, W)`, `latent_dim` (and `in_shape`); `forward(z) -> (B, *out_shape)`."""

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        """The decoder output `(B, *out_shape)` for latents `z` `(B, latent_dim)`: what the loss reads."""
        raise NotImplementedError


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


class Prior(nn.Module):
    """p(z). Built with `latent_dim` (and `in_shape`). Subclasses give `sample` and `log_prob`;
    `kl` defaults to a one-sample Monte Carlo estimate, override it with a closed form when there is one."""

    def __init__(self, *, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def bind(self, encoder: nn.Module) -> None:
        """Called once by the model with its encoder (a VampPrior needs it). Do not register the
        encoder as a submodule: it would be saved twice."""

    def sample(self, n: int) -> Tensor:  # pragma: no cover - interface
        """`n` latents `(n, latent_dim)` drawn from p(z)."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        """log p(z) per latent, `(B,)`, for `z` `(B, latent_dim)`."""
        raise NotImplementedError

    def kl(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(q(z|x) || p(z)) per image; `z` is a sample from q."""
        return gaussian_log_prob(z, mu, logvar) - self.log_prob(z)


@dataclass
class LossParts:
    """Per-image values, each `(B,)`: the training objective and the negative ELBO's two parts, plus
    any further named per-image values of the model (`terms`, e.g. the KL of each latent level),
    whose means `vaezoo eval` and metrics.jsonl report."""

    loss: Tensor
    recon: Tensor
    kl: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ParamGroup:
    """The parameters one named optimizer updates (`Model.parameter_groups`); `betas` overrides
    Adam's (e.g. (0.5, 0.999) for a discriminator). Its learning rate is the recipe's
    `train.group_lr.NAME`, else `train.lr`."""

    params: list[nn.Parameter]
    betas: tuple[float, float] | None = None


Update = Callable[[str, Tensor], None]  # update(optimizer name, per-image loss (B,)): one optimizer step


class Model(nn.Module):
    """A model family: a whole architecture that owns its latents, its objective and its sampling.

    Built with keyword arguments only: `in_shape=(C, H, W)`, `num_classes` (0 without labels),
    `latent_dim` when the recipe has one, the keys of the recipe's `model` table, and each of
    `encoder`, `decoder`, `prior`, `loss` that the recipe has a table for and the constructor names
    (built from the registry). After construction vaezoo sets `in_shape`, `classes` (the dataset's
    class names), `recipe` and `registry_entries` on the model, and `vaezoo.load` sets `metadata`.

    Optional capabilities, used when a family defines them (do not define them to say "not
    supported"): `log_likelihood(x, y=None, k=100) -> (B,)` importance-weighted log p(x) in nats;
    `encode(x, y=None) -> latents` and `decode(z, y=None) -> images in [0, 1]` for interpolations.
    vaezoo asks `implements(model, name)`; the defaults here only raise NotImplementedError.

    Training: by default one optimizer ("model") minimises `forward(x, y, step).loss`. A family that
    needs more (a GAN's discriminator) names its optimizers in `parameter_groups` and overrides
    `training_step`, which calls `update(name, per_image_loss)` once per optimizer it steps."""

    # declarations: what the family is and what it needs (a family sets those that differ from these defaults)

    discrete: bool = False  # True when recon is -log p(x) over the 256 values of each pixel (bits/dim meaningful)
    conditional: bool = False  # True when the model takes class labels y (then y is never None)
    # "elbo": loss at step None is the negative ELBO; any other name is the family's own objective (never reported
    # as an ELBO, a likelihood or bits/dim)
    objective: str = "elbo"
    regularizer: str = "kl"  # what LossParts.kl holds, and the name it is reported under (e.g. "mmd")
    # True when the family applies its loss component's KL schedule (Loss.kl_weight: beta, warm-up)
    applies_kl_weight: bool = False
    # parameter name prefixes that no training step updates (vaezoo.testing accepts them)
    unused_parameters: tuple[str, ...] = ()
    # True when the default training step may be captured as one CUDA graph and replayed: forward(x, y, step)
    # in training never reads a value back to the host (no .item(), bool(tensor), data-dependent shapes or
    # Python branches on tensor values), keeps no Python-side counters, and depends on `step` only through
    # its loss's KL weight (vaezoo runs a warm-up eagerly until the weight settles). docs/plugins.md
    cuda_graph: bool = False
    # keys of the recipe's model table that name another model file (a path, hf://ORG/NAME[@REV] or
    # https://...#sha256=HEX) that this family is built on: vaezoo reads each file once, when training starts,
    # and passes the loaded vaezoo.Model to the constructor under that key; the family keeps what it needs of it as
    # submodules (saved in its own file), and loading its file rebuilds that model from the metadata recorded in it,
    # never reading the other file again. docs/plugins.md, "A family built on another model file"
    model_files: tuple[str, ...] = ()

    # set by vaezoo after construction, not by the family (a model built by hand keeps these defaults)

    in_shape: tuple[int, ...]  # (C, H, W) of its images (families set it with `tuple(in_shape)`)
    classes: tuple[str, ...] = ()  # the dataset's class names
    recipe: Mapping[str, Any] = _EMPTY  # the resolved recipe it was built from (build_model)
    # the registry entries build_model used, by recipe key: "model" (the family), and each of "encoder",
    # "decoder", "prior", "loss" the recipe has (what model files record, and errors name)
    registry_entries: Mapping[str, Entry] = _EMPTY
    metadata: Mapping[str, Any] = _EMPTY  # a loaded model's file header, the vaezoo.* keys parsed (vaezoo.load)
    # for each of model_files: {"source": what the recipe named, "sha256": of that file, "metadata": its vaezoo.*
    # metadata}; saved in this model's file as vaezoo.dependencies (build_model sets it)
    dependencies: Mapping[str, Any] = _EMPTY

    def forward(
        self, x: Tensor, y: Tensor | None = None, step: int | None = None
    ) -> LossParts:  # pragma: no cover - interface
        """Per-image values for images `x` in [0, 1]: `loss` is what training minimises at optimizer
        step `step`; with `step=None` it is the true negative ELBO in nats per image (recon + kl)."""
        raise NotImplementedError

    def sample(
        self, n: int, y: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:  # pragma: no cover - interface
        """`n` new images `(n, C, H, W)` in [0, 1] (of classes `y` for a conditional model)."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # pragma: no cover - interface
        """Images in [0, 1] decoded from the latents of `x`."""
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, ParamGroup]:
        """The named optimizers and what each updates: one, "model", over every parameter by default."""
        return {"model": ParamGroup(list(self.parameters()))}

    def training_step(self, x: Tensor, y: Tensor | None, step: int, update: Update) -> LossParts:
        """One training step on the batch `x`: call `update(name, loss)` for each optimizer to step
        (in the order the method needs: e.g. the discriminator, then the generator, each loss
        computed after the updates it depends on) and return the step's LossParts for the progress
        bar and the epoch's train loss. The default is the one-loss step (vaezoo then runs
        `forward` through DistributedDataParallel and torch.compile when those are on)."""
        parts: LossParts = self(x, y, step)
        update("model", parts.loss)
        return parts

    # optional capabilities: a family defines those it has (vaezoo checks with `implements`)
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 100) -> Tensor:
        """`(B,)` importance-weighted estimate of log p(x) in nats with `k` samples per image (`eval
        --iw-samples`); an ELBO family's only."""
        raise NotImplementedError(_not_defined(self, "log_likelihood"))

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Latents of `x` for interpolations: any tensor whose first dimension is the batch (defined with
        `decode`)."""
        raise NotImplementedError(_not_defined(self, "encode"))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [0, 1] for latents `z` shaped as `encode` gives them (defined with `encode`)."""
        raise NotImplementedError(_not_defined(self, "decode"))


def _not_defined(model: Model, method: str) -> str:
    if method in model._modules:
        return f"model family {_family(model)} has a submodule {method!r}, hidden by vaezoo.Model's {method}: rename it"
    return f"model family {_family(model)} does not define {method} (check with vaezoo.components.implements)"


def implements(model: nn.Module | type, method: str) -> bool:
    """Whether `model` (or a family's class) defines `method` itself rather than inheriting `Model`'s
    default: an optional capability (log_likelihood, encode, decode) or its own training_step."""
    found = getattr(model, method, None)
    return callable(found) and getattr(found, "__func__", found) is not getattr(Model, method, None)


def undeclared(model: Model) -> dict[str, str]:
    """The declarations of vaezoo 0.3 that a family written for 0.2 lacks, each with what vaezoo does
    without it: "objective" when no class of the family's own sets `objective` (vaezoo reports it as
    an ELBO), "optimizers" when it keeps an optimizer of its own (stepped inside forward) and does not
    declare `parameter_groups`."""
    found: dict[str, str] = {}
    own_classes = [cls for cls in type(model).__mro__ if issubclass(cls, Model) and cls is not Model]
    if not any("objective" in vars(cls) for cls in own_classes):
        found["objective"] = "it is reported as an ELBO (bits/dim, likelihood), as vaezoo 0.2 did"
    if not implements(model, "parameter_groups"):
        hidden = [
            f"{prefix}.{attribute}" if prefix else attribute
            for prefix, module in model.named_modules()
            for attribute, value in vars(module).items()
            if any(isinstance(v, torch.optim.Optimizer) for v in _values(value))
        ]
        if hidden:
            found["optimizers"] = (
                f"its own optimizer ({hidden[0]}) is stepped inside forward, as vaezoo 0.2 allowed: its state is "
                "not saved for --resume, torchrun does not average its gradients, and the 'model' optimizer "
                "also holds its parameters"
            )
    return found


def _values(value: Any) -> tuple[Any, ...]:
    """`value`, or the items of a list, tuple or dict (where a family may keep its optimizers)."""
    if isinstance(value, Mapping):
        return tuple(value.values())
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def family_name(model: nn.Module) -> str:
    """The model family's name: the `model.name` of the recipe it was built from, else its class's name
    (a model built by hand)."""
    return recipe_family(getattr(model, "recipe", None)) or type(model).__name__


def _family(model: nn.Module) -> str:
    """The family's name and its class, for error messages (they must not fail)."""
    name = recipe_family(model.recipe if isinstance(model, Model) else None)
    where = f"{type(model).__module__}.{type(model).__qualname__}"
    return f"{name!r} ({where})" if name else where


def _what(value: Any) -> str:
    return (
        f"a {value.dtype} tensor of shape {tuple(value.shape)}"
        if torch.is_tensor(value)
        else f"a {type(value).__name__}"
    )


def broken_contract(model: nn.Module, what: str) -> PluginError:
    """The one-line error of a family that breaks the `Model` contract: `what` says how."""
    return PluginError(f"model family {_family(model)} broke its contract: {what}")


def checked_parts(model: nn.Module, parts: Any, batch: int) -> LossParts:
    """`parts` if it is what `Model.forward` promises (LossParts of `(batch,)` tensors), else a
    PluginError naming the family: a plugin's broken contract is one line, never a traceback."""
    if isinstance(parts, LossParts):
        bad = next(
            (
                k
                for k in ("loss", "recon", "kl")
                if not (torch.is_tensor(getattr(parts, k)) and tuple(getattr(parts, k).shape) == (batch,))
            ),
            None,
        )
        if bad is not None:
            raise broken_contract(model, f"forward's {bad} is {_what(getattr(parts, bad))}, expected shape ({batch},)")
        terms = parts.terms
        if not isinstance(terms, Mapping):
            raise broken_contract(model, f"forward's terms is {_what(terms)}, expected a dict of names to tensors")
        for name, value in terms.items():
            if not (isinstance(name, str) and torch.is_tensor(value) and tuple(value.shape) == (batch,)):
                shown = repr(name)[:100]
                raise broken_contract(model, f"forward's terms[{shown}] is {_what(value)}, expected shape ({batch},)")
        return parts
    raise broken_contract(model, f"forward returned {_what(parts)}, expected vaezoo.LossParts")


def checked_images(model: nn.Module, method: str, images: Any, n: int) -> Tensor:
    """`images` if they are what `sample`/`reconstruct`/`decode` promise (a float `(n, C, H, W)`
    tensor), else a PluginError naming the family."""
    if (
        torch.is_tensor(images)
        and images.dim() == 4
        and len(images) == n
        and images.is_floating_point()
        and images.layout == torch.strided  # not sparse
        and images.device.type != "meta"  # holds values
    ):
        return images
    raise broken_contract(
        model, f"{method} returned {_what(images)}, expected a dense float tensor ({n}, C, H, W) with values"
    )


GROUP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")  # an optimizer's name (train.group_lr.NAME, state keys)


def checked_groups(model: nn.Module, groups: Any) -> dict[str, ParamGroup]:
    """`groups` if they are what `Model.parameter_groups` promises (a dict of at least one optimizer
    name -> `ParamGroup` of the model's own trainable parameters, each in one group, with Adam betas
    in [0, 1)), else a PluginError naming the family: a torch error later would be an internal error."""

    def broke(what: str) -> PluginError:
        return broken_contract(model, f"parameter_groups() {what}")

    if not isinstance(groups, Mapping):
        raise broke(f"returned {_what(groups)}, expected a dict of optimizer name -> vaezoo.components.ParamGroup")
    if not groups:
        raise broke("declared no optimizer, so nothing would train (the default is one, 'model', over every parameter)")
    own = {id(p) for p in model.parameters()}
    owner: dict[int, str] = {}
    for name, group in groups.items():
        if not (isinstance(name, str) and GROUP_NAME.fullmatch(name)):
            raise broke(
                f"named an optimizer {str(name)[:80]!r}: a name is 1 to 100 letters, digits, '_', '.' or '-', "
                "starting with a letter"
            )
        if not isinstance(group, ParamGroup) or not isinstance(group.params, (list, tuple)):
            got = group.params if isinstance(group, ParamGroup) else group
            raise broke(f"gave {name!r} {_what(got)}, expected ParamGroup(a list of the model's parameters)")
        for param in group.params:
            if not (isinstance(param, Tensor) and param.is_leaf):
                raise broke(
                    f"gave {name!r} {_what(param)} that is not a leaf (computed from a parameter): give the "
                    "nn.Parameter itself"
                )
            if id(param) not in own:
                raise broke(f"gave {name!r} a tensor that is not a parameter of the model (it would never be saved)")
            if id(param) in owner:
                raise broke(f"put a parameter in two optimizers, {owner[id(param)]!r} and {name!r}")
            owner[id(param)] = name
        if not any(param.requires_grad for param in group.params):
            raise broke(f"gave {name!r} no trainable parameter, so it would train nothing")
        betas = group.betas
        if betas is not None and not (
            isinstance(betas, (tuple, list))
            and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
        ):
            raise broke(f"gave {name!r} betas {str(betas)[:80]}: Adam's betas are two numbers in [0, 1)")
    return dict(groups)


def checked_update(model: nn.Module, name: str, per_image_loss: Any, batch: int) -> Tensor:
    """`per_image_loss` if it is what `update(name, loss)` takes (a float tensor of shape `(batch,)`),
    else a PluginError naming the family."""
    if torch.is_tensor(per_image_loss) and per_image_loss.is_floating_point() and per_image_loss.shape == (batch,):
        return per_image_loss
    raise broken_contract(
        model,
        f"training_step gave update({name!r}, ...) {_what(per_image_loss)}, expected the per-image loss, a float "
        f"tensor of shape ({batch},)",
    )


class Loss(nn.Module):
    """Likelihood p(x|z) + KL. Subclasses give `nll` and `mean_image`; `image` is what families decode to.

    `params_per_channel` is how many decoder outputs the likelihood needs per image channel;
    `discrete` is True when `nll` is a proper likelihood over the 256 pixel values, so bits per
    dimension are meaningful."""

    params_per_channel: int = 1
    discrete: bool = False

    def nll(self, x: Tensor, out: Tensor) -> Tensor:  # pragma: no cover - interface
        """-log p(x | decoder output) per image, summed over pixels, in nats."""
        raise NotImplementedError

    def mean_image(self, out: Tensor) -> Tensor:  # pragma: no cover - interface
        """The decoder output as an image in [0, 1] (for pictures)."""
        raise NotImplementedError

    def image(self, out: Tensor) -> Tensor:
        """The image a family decodes `out` to: `mean_image(out)` clamped to [0, 1] (rounding aside,
        the mean is in [0, 1] already)."""
        return self.mean_image(out).clamp(0, 1)

    def kl_weight(self, step: int | None) -> float:
        """Weight of the KL term at a training step (`None`: evaluation, the true ELBO)."""
        return 1.0

    def forward(
        self, x: Tensor, out: Tensor, mu: Tensor, logvar: Tensor, z: Tensor, prior: Prior, step: int | None = None
    ) -> LossParts:
        """The LossParts of images `x` and decoder outputs `out`: `recon` is `nll`, `kl` the prior's KL of
        the posterior `(mu, logvar)` at its sample `z`, and `loss` is recon + kl_weight(step) * kl."""
        recon = self.nll(x.float(), out.float())
        kl = prior.kl(mu.float(), logvar.float(), z.float())
        weight = self.kl_weight(step)
        return LossParts(recon + kl if weight == 1.0 else recon + weight * kl, recon, kl)


class EncoderDecoderFamily(Model):
    """A base for families built on the recipe's encoder, decoder, prior and loss: a subclass's
    constructor takes them and sets them as those attributes (calling `prior.bind(encoder)`), and its
    `forward` gives the LossParts; the rest is inherited. The latent
    of an image is the encoder's first output (the posterior mean, or a deterministic code): the family
    samples by decoding prior draws scaled by the temperature, reconstructs by decoding `encode(x)`, and
    decodes through the loss's `image`. Override what a family does otherwise (the zoo's `iaf-vae`
    encodes through its flow, `rae` samples from its mixture). Seven of the zoo's families subclass it;
    docs/plugins.md has an example."""

    encoder: nn.Module
    decoder: nn.Module
    prior: Prior
    loss: Loss

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """`n` images in [0, 1] decoded from prior samples (latents scaled by `temperature`)."""
        return self.decode(self.prior.sample(n) * temperature)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Images decoded from `encode(x)`."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The encoder's first output: the posterior means of `x` (a deterministic encoder's codes)."""
        codes: Tensor = self.encoder(x)[0]
        return codes

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [0, 1] for latents `z`: the loss's image of the decoder's output."""
        return self.loss.image(self.decoder(z))


class Dataset:
    """Built with `root` (a folder, maybe empty or missing) and recipe keys. `shape` is `(C, H, W)`;
    `load(split)` returns `(images, labels)`: uint8 `(N, C, H, W)` and int64 `(N,)`; `classes` names
    the labels (empty when they carry no class)."""

    shape: tuple[int, int, int]
    splits: tuple[str, ...] = ("train", "test")
    classes: tuple[str, ...] = ()  # class names, label i is classes[i] (empty when unlabeled)
    path_keys: tuple[str, ...] = ()  # recipe keys naming files or folders: ignored in recipes read from model files

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)

    def load(self, split: str) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """The images and labels of `split` (one of `splits`): uint8 `(N, C, H, W)` and int64 `(N,)`."""
        raise NotImplementedError

    def cache_key(self) -> str:
        """What identifies this dataset's decoded images in the cache (path and options)."""
        return f"{type(self).__module__}.{type(self).__qualname__}:{self.root.resolve()}"


class Sampler(nn.Module):
    """A density over a trained model's codes, fitted after training (`vaezoo fit-sampler`, or
    `vaezoo sample --sampler NAME` on first use) and decoded by the model: the ex-post density
    estimation of Ghosh et al. (2020). Built with `dim` (the size of one flattened code) and the
    keys of `--set sampler.KEY=VALUE`; its state is its registered buffers (and parameters), which
    vaezoo stores in the sampler file beside the model."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def fit(self, codes: Tensor) -> None:  # pragma: no cover - interface
        """Fit to `codes`, `(N, dim)` float64 on the CPU: the training split's codes (`Model.encode`)."""
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:  # pragma: no cover - interface
        """`(n, dim)` codes (any float dtype), drawn with torch's global generator so that vaezoo's
        `--seed` decides them; `temperature` scales their spread."""
        raise NotImplementedError


class LRSchedule:
    """A learning-rate schedule (`train.lr_schedule = { name = "...", ... }`): `factor(step, history)`
    multiplies each optimizer's learning rate (`train.lr`, or `train.group_lr.NAME`) at optimizer step
    `step` (counted from 0 over the whole run); `history` holds the metrics of the epochs finished so
    far (the lines of metrics.jsonl), for schedules that follow a metric. Built with `total_steps`,
    `steps_per_epoch` and the table's keys. It keeps no state of its own: the same step and history
    give the same factor, so a resumed run follows it exactly."""

    def __init__(self, *, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0) -> None:
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps <= 10**9):
            raise ValueError(f"warmup_steps must be a whole number from 0 to 10**9, got {warmup_steps!r}")
        self.total_steps, self.steps_per_epoch, self.warmup_steps = total_steps, steps_per_epoch, warmup_steps

    def factor(self, step: int, history: Sequence[Mapping[str, Any]] = ()) -> float:
        """The warm-up (linear from 1 / warmup_steps to 1 over the first warmup_steps steps) times `decay`."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.decay(step, history)

    def decay(self, step: int, history: Sequence[Mapping[str, Any]]) -> float:
        """The schedule after its warm-up: 1.0 here (a constant learning rate)."""
        return 1.0

    @property
    def constant(self) -> bool:
        """Whether the factor is 1 at every step (then a CUDA graph may capture the step)."""
        return self.warmup_steps == 0 and type(self).decay is LRSchedule.decay


@dataclass(frozen=True)
class RunInfo:
    """What a `Logger` is told when a run starts: the run folder, the resolved recipe (as recipe.toml
    has it), where the run starts (`epoch` epochs finished: 0, or more on `--resume`, then `history`
    holds their lines of metrics.jsonl), the device and the precision it trains in."""

    out_dir: Path
    recipe: Mapping[str, Any]
    epoch: int = 0
    history: Sequence[Mapping[str, Any]] = ()
    device: str = "cpu"
    precision: str = "fp32"


class Logger:
    """An experiment tracker (`train.loggers = ["NAME", ...]`, `vaezoo run --logger NAME`): built with
    the keys of its table in `train.loggers` before the run loads anything (check there that its
    package is installed: an ImportError becomes one line, exit 2), then told of the run on rank 0
    only. Override what you need. A method that raises drops the logger with one warning line (it is
    not called again) and the run goes on."""

    def start(self, run: RunInfo) -> str | None:
        """The run starts, or resumes (`run.epoch` > 0). Returns a line that vaezoo prints on stderr
        (where to look at the run), or None."""
        return None

    def log_progress(self, step: int, loss: float, images_per_s: float) -> None:
        """Every 20 optimizer steps: the epoch's running mean training loss (nats per image) and speed;
        `step` counts the run's optimizer steps."""

    def log_metrics(self, metrics: Mapping[str, Any], epoch: int) -> None:
        """Epoch `epoch` ended: its line of metrics.jsonl (numbers, `precision` a name, `test_terms` a
        table of numbers)."""

    def log_images(self, images: Mapping[str, Any], epoch: int) -> None:
        """The pictures of epoch `epoch` as the run folder has them (`samples`, `reconstructions`,
        `interpolations`): name -> `(H, W, 3)` uint8 numpy array."""

    def finish(self, status: str) -> None:
        """The run ended: `"finished"` (its last epoch, or stopped early; model.safetensors is written),
        `"interrupted"` (Ctrl-C or SIGTERM: its state is saved, and a resume starts a logger again) or
        `"failed"`."""
