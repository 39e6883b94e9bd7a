"""The kinds of things plugins register: one table, read by the hooks, the registry, recipes,
checkpoints and the CLI. Plural names are the registry's kinds (`vaezoo list encoders`); singular
names are recipe keys and the `kind` of a model file's component records."""

from collections.abc import Mapping

KINDS = {
    "recipes": "recipe",
    "models": "model",
    "encoders": "encoder",
    "decoders": "decoder",
    "priors": "prior",
    "losses": "loss",
    "datasets": "dataset",
    "samplers": "sampler",
    "schedules": "schedule",
    "loggers": "logger",
}
COMPONENT_KINDS = ("datasets", "encoders", "decoders", "priors", "losses")  # a recipe's component tables
MODEL_PARTS = ("encoder", "decoder", "prior", "loss")  # the components a model family may take


def recipe_family(recipe: object) -> str | None:
    """The model family a recipe names (its `model.name`), None where it names none; never fails, on
    a malformed recipe either (error messages use it)."""
    table = recipe.get("model") if isinstance(recipe, Mapping) else None
    name = table.get("name") if isinstance(table, Mapping) else None
    return name if isinstance(name, str) else None
