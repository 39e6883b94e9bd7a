"""The hooks a vaezoo plugin can implement. Each receives a `register(name, obj, *, summary=None)`
callable and returns nothing.

`obj` is a class or factory called with keyword arguments only, or a string ``"module:attribute"``
that is imported on first use (keeps `vaezoo list` fast: torch is not imported to list names).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from vaezoo.plugins.kinds import KINDS

hookspec = pluggy.HookspecMarker("vaezoo")

Register = Callable[..., None]


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: `nn.Module`s built with `in_shape`, `latent_dim` and the recipe's keys,
    whose `forward(x)` returns `(mu, logvar)`, each `(B, latent_dim)`."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register decoders: `nn.Module`s built with `in_shape`, `out_shape`, `latent_dim` and the
    recipe's keys, whose `forward(z)` returns `(B, *out_shape)`."""


@hookspec
def register_priors(register: Register) -> None:
    """Register priors: `vaezoo.Prior` subclasses with `sample(n)`, `log_prob(z)` and `kl(...)`."""


@hookspec
def register_losses(register: Register) -> None:
    """Register losses: `vaezoo.Loss` subclasses (likelihood + KL, and decoder output -> image)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: `vaezoo.Dataset` subclasses giving `shape` and uint8 train/test splits."""


@hookspec
def register_models(register: Register) -> None:
    """Register model families: `vaezoo.Model` subclasses (whole architectures) built with `in_shape`,
    `num_classes`, `latent_dim` when the recipe has one, the keys of the recipe's `model` table, and
    the `encoder`, `decoder`, `prior` and `loss` components their constructor names."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers: `vaezoo.Sampler` subclasses built with `dim` and the keys of `--set
    sampler.KEY=VALUE`, fitted on a trained model's codes and sampled in their place (`vaezoo sample
    --sampler NAME`)."""


@hookspec
def register_schedules(register: Register) -> None:
    """Register learning-rate schedules: `vaezoo.LRSchedule` subclasses built with `total_steps`,
    `steps_per_epoch` and the keys of `train.lr_schedule`, whose `factor(step, history)` multiplies the
    learning rate at each optimizer step."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register experiment loggers: `vaezoo.Logger` subclasses built with the keys of their table in
    `train.loggers` (`vaezoo run --logger NAME`), told of a run's start, epochs, pictures and end."""


@hookspec
def register_recipes(register: Register) -> None:
    """Register recipes: `register("name", {...recipe table...})`, the same tables as registry.toml."""


HOOKS = {kind: f"register_{kind}" for kind in KINDS}  # kind -> the hook that registers it
