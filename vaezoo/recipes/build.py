"""Building a model from a resolved recipe: the recipe's model family (`vae` when it names none), given
the components its constructor names, each built from the registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vaezoo.components import Model
from vaezoo.errors import PluginError, RecipeError
from vaezoo.plugins.kinds import MODEL_PARTS
from vaezoo.recipes.resolve import COMPONENTS, component_parameters, objective_problem

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
    loss first, because the decoder's `out_shape` is `(C * loss.params_per_channel, H, W)`."""
    shapes: dict[str, Any] = {"in_shape": in_shape}
    if "latent_dim" in recipe:
        shapes["latent_dim"] = recipe["latent_dim"]
    parts: dict[str, Any] = {}
    for key in ("loss", "encoder", "prior", "decoder"):
        if key not in recipe:
            continue
        if key == "decoder":
            k = getattr(parts.get("loss"), "params_per_channel", 1)
            shapes = {**shapes, "out_shape": (in_shape[0] * k, *in_shape[1:])}
        parts[key] = instantiate(entries[key].load(), recipe[key], shapes, key)
    return parts


def build_model(recipe: Mapping[str, Any], in_shape: Sequence[int], classes: Sequence[str] = ()) -> Model:
    """The model a resolved recipe describes, for images of shape `in_shape` labelled by `classes`;
    it holds that recipe (`model.recipe`) and the registry entries it was built from
    (`model.registry_entries`)."""
    in_shape = tuple(int(d) for d in in_shape)
    family = recipe["model"]
    entries = registry_entries(recipe)
    target = entries["model"].load()  # the family's plugin imports before any component is built
    provided: dict[str, Any] = {
        "in_shape": in_shape,
        "num_classes": len(classes),
        **build_components(recipe, in_shape, entries),
    }
    if "latent_dim" in recipe:
        provided["latent_dim"] = recipe["latent_dim"]
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
    return model


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
            "warm-up would be ignored): use a loss without one, or a family that applies it (vae, cvae; a family "
            "applies it by using loss.kl_weight(step) and declaring applies_kl_weight = True)"
        )
