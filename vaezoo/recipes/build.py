"""Building a model from a resolved recipe: the recipe's model family (`vae` when it names none), given
the components its constructor names, each built from the registry."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vaezoo.components import Model, undeclared
from vaezoo.errors import PluginError, RecipeError, printable
from vaezoo.plugins.api_version import EXAMPLE
from vaezoo.plugins.kinds import MODEL_PARTS
from vaezoo.recipes.resolve import COMPONENTS, component_parameters, is_int, objective_problem

if TYPE_CHECKING:
    from vaezoo.plugins.registry import Entry


def instantiate(target: Any, table: Mapping[str, Any], provided: Mapping[str, Any], what: str) -> Any:
    """Call a constructor with the recipe keys plus the framework arguments it accepts."""
    params, var_keyword = component_parameters(target)
    kwargs = {k: v for k, v in provided.items() if k in params or var_keyword}
    kwargs.update({k: tuple(v) if isinstance(v, list) else v for k, v in table.items() if k != "name"})
    try:
        return target(**kwargs)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"cannot build {what} {table['name']!r}: {error}") from error
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        sizes = [f"{what}.{k}={v}" for k, v in table.items() if is_int(v)]
        if "latent_dim" in kwargs:
            sizes.append(f"latent_dim={kwargs['latent_dim']}")
        raise RecipeError(
            f"cannot build {what} {table['name']!r}: out of memory{_allocation(error)}; make it smaller"
            + (f" (its sizes: {', '.join(sizes)})" if sizes else "")
        ) from error


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed: Python's MemoryError, PyTorch's CPU allocator
    ("can't allocate memory") or a device out of memory."""
    text = str(error)
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _allocation(error: BaseException) -> str:
    """' (N bytes asked for)' where PyTorch's message says how much one allocation wanted."""
    found = re.search(r"allocate ([0-9]+) bytes", str(error))
    return f" ({int(found[1]):,} bytes asked for at once)" if found else ""


def registry_entries(recipe: Mapping[str, Any]) -> dict[str, Entry]:
    """The registry entries of what `build_model` builds from a recipe, by recipe key: "model" (the
    family) and each of the model parts (encoder, decoder, prior, loss) the recipe has."""
    from vaezoo.plugins.manager import get_registry

    registry = get_registry()
    entries = {"model": registry.get("models", recipe["model"]["name"])}
    for key in MODEL_PARTS:
        if key in recipe:
            entries[key] = registry.get(COMPONENTS[key], recipe[key]["name"])
    return entries


def build_components(
    recipe: Mapping[str, Any], in_shape: tuple[int, ...], entries: Mapping[str, Entry]
) -> dict[str, Any]:
    """The recipe's encoder, decoder, prior and loss (those it has) from their registry `entries`: the
    loss first, because the decoder's `out_shape` depends on it (`decoder_out_shape`)."""
    shapes: dict[str, Any] = {"in_shape": in_shape}
    if "latent_dim" in recipe:
        shapes["latent_dim"] = recipe["latent_dim"]
    parts: dict[str, Any] = {}
    for key in ("loss", "encoder", "prior", "decoder"):
        if key not in recipe:
            continue
        if key == "decoder":
            shapes = {**shapes, "out_shape": decoder_out_shape(in_shape, parts.get("loss"))}
        parts[key] = instantiate(entries[key].load(), recipe[key], shapes, key)
    return parts


def decoder_out_shape(in_shape: Sequence[int], loss: Any) -> tuple[int, ...]:
    """The `out_shape` a decoder is built with: `(C * loss.params_per_channel, H, W)` for images of
    `in_shape` `(C, H, W)` (one parameter per channel without a loss)."""
    return (in_shape[0] * getattr(loss, "params_per_channel", 1), *in_shape[1:])


MAX_MODEL_FILES = 8  # model files one family may be built on


def model_file_keys(family: Any, name: str) -> tuple[str, ...]:
    """The keys of a family's model table that name another model file (`Model.model_files`), checked."""
    keys = getattr(family, "model_files", ())
    if not (
        isinstance(keys, tuple)
        and len(keys) <= MAX_MODEL_FILES
        and all(isinstance(key, str) and key.isidentifier() and key != "name" for key in keys)
    ):
        raise PluginError(
            f"model family {name!r} declares model_files {keys!r}: expected a tuple of at most {MAX_MODEL_FILES} "
            "constructor argument names"
        )
    return keys


def build_model(
    recipe: Mapping[str, Any],
    in_shape: Sequence[int],
    classes: Sequence[str] = (),
    dependencies: Mapping[str, Dependency] | None = None,
) -> Model:
    """The model a resolved recipe describes, for images of shape `in_shape` labelled by `classes`;
    it holds that recipe (`model.recipe`) and the registry entries it was built from
    (`model.registry_entries`). A family built on other model files (`Model.model_files`) gets them
    from `dependencies`: key -> the loaded model and the record of its file (`model.dependencies`)."""
    in_shape = tuple(int(d) for d in in_shape)
    family = recipe["model"]
    entries = registry_entries(recipe)
    target = entries["model"].load()  # the family's plugin imports before any component is built
    keys = model_file_keys(target, family["name"])
    dependencies = dependencies or {}
    missing = [key for key in keys if key not in dependencies]
    if missing:
        raise RecipeError(
            f"model {family['name']!r} is built on the model file named by model.{missing[0]}, which was not read "
            "(vaezoo.fit, vaezoo.build and vaezoo.load read it)"
        )
    family = {key: value for key, value in family.items() if key not in keys}
    provided: dict[str, Any] = {
        "in_shape": in_shape,
        "num_classes": len(classes),
        **build_components(recipe, in_shape, entries),
    }
    if "latent_dim" in recipe:
        provided["latent_dim"] = recipe["latent_dim"]
    provided.update({key: dependencies[key].model for key in keys})
    model = instantiate(target, family, provided, "model")
    if not isinstance(model, Model):
        raise RecipeError(
            f"model {family['name']!r} built a {type(model).__name__}, not a vaezoo.Model subclass (its "
            "plugin is broken)"
        )
    if model.conditional and not classes:
        raise RecipeError(
            f"model {family['name']!r} is conditional: it needs a dataset with class labels, and "
            f"{recipe['dataset']['name']!r} has none"
        )
    _check_declarations(model, family["name"], provided.get("loss"), recipe)
    model.in_shape, model.classes = in_shape, tuple(classes)
    model.recipe, model.registry_entries = recipe, entries
    if keys:
        model.dependencies = {key: dependencies[key].record for key in keys}
    if entries["model"].plugin.api_requirement is None:  # a plugin written for vaezoo 0.2
        _warn_undeclared(model, family["name"], entries["model"])
    return model


@dataclass
class Dependency:
    """A model file a family is built on: the loaded model, and the record saved with the family's
    model (`source`: what the recipe named, `sha256` of the file, `metadata`: its vaezoo.* metadata)."""

    model: Model
    record: dict[str, Any]


# what a family written for vaezoo 0.2 declares to follow plugin API 1 (docs/plugins.md, Porting a 0.2 plugin)
PORTING = {
    "objective": "declare objective = 'elbo' if its loss at step=None is the negative ELBO, else objective and "
    "regularizer names of its own",
    "optimizers": "declare parameter_groups() with a group per optimizer and a training_step that steps each "
    "through update(name, per_image_loss)",
}


def _warn_undeclared(model: Model, name: str, entry: Entry) -> None:
    """One deprecation warning for each declaration the family lacks (once per plugin and process)."""
    plugin = entry.plugin
    for declaration, consequence in undeclared(model).items():
        if (name, declaration) in plugin.deprecations:
            continue
        plugin.deprecations.add((name, declaration))
        print(
            printable(
                f"vaezoo: warning: deprecated: model family {name!r} (plugin {plugin.name!r}, {plugin.distribution} "
                f"{plugin.version}) declares no {declaration}: {consequence}; {PORTING[declaration]}, and "
                f"VAEZOO_PLUGIN_API = {EXAMPLE!r} in the plugin's module (docs/plugins.md, Porting a 0.2 plugin)"
            ),
            file=sys.stderr,
        )


def _check_declarations(model: Model, name: str, loss: Any, recipe: Mapping[str, Any]) -> None:
    """What a family declares about its objective is usable (`objective_problem`), and nothing in the
    recipe is ignored: a loss with a KL schedule (beta, warm-up) needs a family that applies it."""
    problem = objective_problem(model.objective, model.regularizer)
    if problem:
        raise PluginError(f"model family {name!r}: {problem}")
    if (
        loss is not None
        and not model.applies_kl_weight
        and any(loss.kl_weight(step) != 1.0 for step in (0, 1, 1000, 10**9))
    ):
        raise RecipeError(
            f"model {name!r} does not apply the KL schedule of loss {recipe['loss']['name']!r} (its beta or "
            "warm-up would be ignored): use a loss without one, or a family that applies it (vae, cvae, vae-gan; "
            "a family applies it by using loss.kl_weight(step) and declaring applies_kl_weight = True)"
        )
