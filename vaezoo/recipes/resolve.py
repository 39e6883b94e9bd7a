"""Recipes: a registered table (or a .toml file) plus overrides -> a resolved, validated recipe.

Precedence: command-line options > `--set KEY=VALUE` > recipe > component defaults. Every key is
checked: an unknown one is an error, never silently ignored. Names are short (`conv`) or qualified
(`vaezoo:conv`); a registered recipe's short names mean its own distribution's components first, and the
resolved recipe spells each one so that it names the same component without that context."""

from __future__ import annotations

import copy
import inspect
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vaezoo.errors import RecipeError
from vaezoo.plugins.kinds import COMPONENT_KINDS, KINDS, MODEL_PARTS
from vaezoo.plugins.registry import ZOO

COMPONENTS = {KINDS[kind]: kind for kind in COMPONENT_KINDS}  # recipe key -> registry kind
DEFAULT_MODEL = f"{ZOO}:vae"  # the family of a recipe without a `model` table (every vaezoo 0.1 recipe)
TOP_LEVEL = {"name", "summary", "latent_dim", "model", "train", *COMPONENTS}
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 15,
    "batch_size": 128,
    "lr": 1e-3,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "grad_clip": 0.0,
    "skip_grad_norm": 0.0,  # > 0: skip updates whose gradient norm is at least this (or not finite), as VDVAE does
    "seed": 0,
    "limit": 0,
    "test_limit": 0,
    "precision": "auto",
    "threads": "auto",  # CPU threads of the run: N, or auto (OMP_NUM_THREADS, else half the CPUs: docs/performance.md)
    "compile": False,
    "cuda_graph": True,  # on CUDA, replay the training step from a CUDA graph where the run allows it
    "channels_last": True,
    "eval_batch_size": 500,
    "sample_count": 64,
    # learning rates of a family's named optimizers (Model.parameter_groups), e.g. { discriminator = 1e-4 }
    "group_lr": {},
    # the learning-rate schedule (a `schedules` plugin and its keys), e.g. { name = "cosine", warmup_steps = 500 }
    "lr_schedule": {"name": "constant"},
    "val_fraction": 0.0,  # > 0: hold out this fraction of the training split (drawn by train.seed) for val_loss
    "early_stop_patience": 0,  # > 0: stop when val_loss has not improved for this many epochs
    # experiment trackers (`loggers` plugins): names or tables with their keys, e.g. ["mlflow", "tensorboard"]
    "loggers": [],
}
MAX_VAL_FRACTION = 0.9
SCHEDULE_ARGS = {"total_steps", "steps_per_epoch"}  # what vaezoo passes a schedule itself
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_THREADS = 1024
# Arguments the framework passes itself: a recipe cannot set them per component or model family.
FRAMEWORK_ARGS = {"in_shape", "out_shape", "latent_dim", "root"}
MODEL_ARGS = {"in_shape", "num_classes", "latent_dim", *MODEL_PARTS}
# A recipe's name becomes a folder name (runs/NAME-TIME/): letters, digits, '.', '_', '+', '-', no separators.
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
MAX_LATENT_DIM = 65536  # as a layer's width (plugins/vaezoo_defaults/common.py)
# Images in one picture (samples.png, sample -n, reconstruct -n, interpolate): 10,000 CIFAR-sized tiles make a
# 3,400 x 3,400 PNG.
MAX_GRID_IMAGES = 10_000
# What a family may call its objective and regularizer (`Model.objective`, `Model.regularizer`, recorded
# in model files as vaezoo.objective). `eval` reports the regularizer under its name beside its own fields,
# and metrics.jsonl as `test_<regularizer>`: a regularizer never takes one of those names.
REPORT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RESERVED_REPORT_NAMES = frozenset(
    {
        *("loss", "recon", "terms", "bits_per_dim", "step", "epoch", "objective", "regularizer"),
        *("model", "split", "images", "iw_samples", "iw_nll", "iw_bits_per_dim", "iw_note", "bits_per_dim_note"),
        *("recon_mse", "psnr_db", "precision", "fid", "kid_mean", "kid_std", "fid_samples"),
    }
)
MAX_RECIPE_DEPTH = 32  # tables and lists inside one another in a recipe (as the CLI's MAX_SET_DEPTH)


def objective_problem(objective: Any, regularizer: Any) -> str | None:
    """What is wrong with a family's declared (objective, regularizer), or None: each a short
    lower-case name, the regularizer none of RESERVED_REPORT_NAMES, and an ELBO's regularizer the KL."""
    if not (isinstance(objective, str) and REPORT_NAME.fullmatch(objective)):
        return f"objective {repr(objective)[:40]} is not 'elbo' or a short lower-case name"
    named = isinstance(regularizer, str) and REPORT_NAME.fullmatch(regularizer)
    if not named or regularizer in RESERVED_REPORT_NAMES:
        return (
            f"regularizer {repr(regularizer)[:40]} is not a short lower-case name other than "
            f"{', '.join(sorted(RESERVED_REPORT_NAMES))}"
        )
    if objective == "elbo" and regularizer != "kl":
        return (
            f"objective 'elbo' has the regularizer 'kl', not {regularizer!r} (a family that is not an ELBO names "
            "its own objective)"
        )
    return None


def nesting_depth(value: Any, stop: int = MAX_RECIPE_DEPTH) -> int:
    """How deeply tables and lists nest in `value` (a scalar: 0), counted without recursion and only
    up to `stop` + 1 (deeper is "too deep")."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > stop:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_depth(table: Any, where: str) -> None:
    """A RecipeError naming `where` for a recipe nested more than MAX_RECIPE_DEPTH levels deep."""
    if nesting_depth(table) > MAX_RECIPE_DEPTH:
        raise _too_deep(where)


def _too_deep(where: str) -> RecipeError:
    return RecipeError(f"{where} is nested too deeply (more than {MAX_RECIPE_DEPTH} levels of tables and lists)")


def read_recipe_file(path: Path, where: str) -> dict[str, Any]:
    """The table of a recipe file (UTF-8 TOML), or a RecipeError naming `where`."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RecipeError(f"{where} is not valid TOML: {error}") from error
    except RecursionError as error:
        raise _too_deep(where) from error
    check_depth(table, where)
    return table


def parse_set(item: str) -> tuple[list[str], Any]:
    """`KEY=VALUE` with a dotted key; VALUE is TOML (a bare word is taken as a string)."""
    key, sep, text = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise RecipeError(f"bad --set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except RecursionError as error:
        raise RecipeError(f"bad --set {key}: its value is nested too deeply") from error
    except tomllib.TOMLDecodeError as error:
        if text and all(c.isalnum() or c in "-_./:" for c in text):
            value = text
        else:
            raise RecipeError(
                f"bad --set {item!r}: {text!r} is not a TOML value (strings need quotes, lists brackets: [64, 128])"
            ) from error
    return path, value


def apply_override(recipe: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `recipe[a][b]... = value`, creating nothing but the last key."""
    if path[0] not in TOP_LEVEL:
        raise RecipeError(f"unknown recipe key {path[0]!r}: use one of {', '.join(sorted(TOP_LEVEL))}")
    if path[0] == "model" and len(path) > 1 and "model" not in recipe:
        recipe["model"] = {"name": DEFAULT_MODEL}  # a recipe without a model table is a `vae`
    if path[0] == "train" and len(path) > 1 and "train" not in recipe:
        recipe["train"] = {}  # a recipe without a train table has the defaults
    node = recipe
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            tables = ", ".join(sorted(key for key, value in node.items() if isinstance(value, dict))) or "none"
            if node is recipe and part in MODEL_PARTS and child is None:
                family = recipe.get("model", {}).get("name", DEFAULT_MODEL)
                raise RecipeError(
                    f"cannot set {'.'.join(path)}: this recipe has no {part} (its model family {family!r} is built "
                    f"without one here); its tables: {tables}"
                )
            raise RecipeError(
                f"cannot set {'.'.join(path)}: {part!r} is not a table in this recipe (its tables here: {tables})"
            )
        node = child
    node[path[-1]] = value


def find_recipe(name_or_path: str | Path) -> tuple[str, dict[str, Any], str | None]:
    """A registered recipe by name (short or `DISTRIBUTION:NAME`), or a recipe file (a `.toml` holding
    one recipe): its name, its table and the distribution that registers it (None for a file)."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        table = read_recipe_file(path, f"recipe file {path}")
        return check_name(table.get("name", path.stem), f"recipe file {path}"), table, None
    from vaezoo.plugins.manager import get_registry

    entry = get_registry().get("recipes", str(name_or_path))
    check_depth(entry.load(), f"recipe {entry.name!r} of plugin {entry.plugin.name!r} ({entry.plugin.distribution})")
    return entry.name, copy.deepcopy(entry.load()), entry.plugin.distribution


def resolve_recipe(
    recipe: str | Path | Mapping[str, Any],
    sets: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved recipe: overrides applied, component defaults filled in, every key validated.

    `sets` are `KEY=VALUE` strings; `options` are dotted keys from command-line options (None values
    are dropped, so an option that was not given changes nothing)."""
    source = None
    if isinstance(recipe, Mapping):
        check_depth(recipe, f"recipe {str(recipe.get('name', 'custom'))[:100]!r}")
        name, table = str(recipe.get("name", "custom")), copy.deepcopy(dict(recipe))
    else:
        name, table, source = find_recipe(recipe)
    for item in sets:
        apply_override(table, *parse_set(item))
    for key, value in (options or {}).items():
        if value is not None:
            apply_override(table, key.split("."), value)
    return validate(name, table, source=source)


def check_name(name: Any, where: str = "recipe") -> str:
    """A recipe name that is safe as a folder name and to print, or a RecipeError."""
    if not isinstance(name, str) or not RECIPE_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise RecipeError(
            f"{where}: name {shown} is not a recipe name (up to 100 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit)"
        )
    return name


def validate(
    name: str, table: dict[str, Any], *, need_dataset: bool = True, source: str | None = None
) -> dict[str, Any]:
    """The resolved recipe (see `resolve_recipe`). `need_dataset=False` (a model file being loaded:
    sampling needs no data) keeps a dataset table whose plugin is not installed as it is. `source`:
    the distribution whose components the recipe's short names mean first (the one that registers it)."""
    check_name(name)
    unknown = set(table) - TOP_LEVEL
    if unknown:
        raise RecipeError(
            f"recipe {name!r}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(TOP_LEVEL))}"
        )
    resolved: dict[str, Any] = {"name": name, "summary": str(table.get("summary", ""))}
    if "latent_dim" in table:
        latent_dim = table["latent_dim"]
        if not is_int(latent_dim, 1, MAX_LATENT_DIM):
            raise RecipeError(
                f"recipe {name!r}: latent_dim must be an integer from 1 to {MAX_LATENT_DIM}, got {latent_dim!r}"
            )
        resolved["latent_dim"] = latent_dim
    resolved["model"] = _resolve_model(name, table, source)
    resolved["dataset"] = _resolve_dataset(name, table.get("dataset"), need_dataset, source)
    for key in MODEL_PARTS:
        if key in table:
            resolved[key] = resolve_component(name, key, COMPONENTS[key], table[key], source=source)
    resolved["train"] = _resolve_train(name, table.get("train", {}), loading=not need_dataset)
    return resolved


def _resolve_dataset(recipe: str, table: Any, needed: bool, source: str | None) -> dict[str, Any]:
    from vaezoo.plugins.manager import get_registry

    if (
        not needed
        and isinstance(table, dict)
        and isinstance(table.get("name"), str)
        and not get_registry().find("datasets", table["name"])
    ):
        return dict(table)
    return resolve_component(recipe, "dataset", "datasets", table, source=source)


def _resolve_model(recipe: str, table: dict[str, Any], source: str | None) -> dict[str, Any]:
    """The `model` table with the family's defaults; checks that the recipe gives the family exactly
    the components (and latent_dim) its constructor takes."""
    model = table.get("model", {"name": DEFAULT_MODEL})
    resolved = resolve_component(recipe, "model", "models", model, MODEL_ARGS, source=source)
    from vaezoo.plugins.manager import get_registry

    params, var_keyword = component_parameters(get_registry().get("models", resolved["name"]).load())
    for key in (*MODEL_PARTS, "latent_dim"):
        if key in table and key not in params and not var_keyword:
            raise RecipeError(
                f"recipe {recipe!r}: model {resolved['name']!r} takes no {key} (remove it from the recipe)"
            )
        required = key in params and params[key].default is inspect.Parameter.empty
        if required and key not in table:
            example = "latent_dim = 32" if key == "latent_dim" else f'{key} = {{ name = "..." }}'
            raise RecipeError(
                f"recipe {recipe!r}: model {resolved['name']!r} needs {key} ({example}; `vaezoo list "
                f"{COMPONENTS.get(key, 'recipes')}`)"
            )
    return resolved


def is_int(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """Whether `value` is a whole number (an int, not a bool) from `low` to `high`: what a TOML or JSON
    value must be to count as one."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _resolve_train(name: str, train: Any, loading: bool = False) -> dict[str, Any]:
    if not isinstance(train, dict):
        raise RecipeError(f"recipe {name!r}: train must be a table")
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise RecipeError(
            f"recipe {name!r}: unknown key train.{sorted(unknown)[0]}; allowed: {', '.join(TRAIN_DEFAULTS)}"
        )
    resolved = {**TRAIN_DEFAULTS, **train}
    if isinstance(resolved["lr_schedule"], str):  # lr_schedule = "cosine"
        resolved["lr_schedule"] = {"name": resolved["lr_schedule"]}
    if isinstance(resolved["loggers"], str):  # loggers = "mlflow"
        resolved["loggers"] = [resolved["loggers"]]
    for key, default in TRAIN_DEFAULTS.items():
        if key != "threads":  # a number or "auto"
            resolved[key] = _check_type(f"train.{key}", resolved[key], default)
    threads = resolved["threads"]
    if threads != "auto" and not is_int(threads, 1, MAX_THREADS):
        raise RecipeError(f'train.threads must be "auto" or a whole number from 1 to {MAX_THREADS}, got {threads!r}')
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if resolved[key] < 1:
            raise RecipeError(f"train.{key} must be at least 1, got {resolved[key]}")
    for key in ("limit", "test_limit", "sample_count", "seed"):
        if resolved[key] < 0:
            raise RecipeError(f"train.{key} must not be negative, got {resolved[key]}")
    if resolved["seed"] >= 2**63:
        raise RecipeError(f"train.seed must be below 2**63, got {resolved['seed']}")
    for key in ("grad_clip", "skip_grad_norm", "weight_decay"):
        if not resolved[key] >= 0:
            raise RecipeError(f"train.{key} must not be negative, got {resolved[key]}")
    if not (resolved["lr"] > 0 and math.isfinite(resolved["lr"])):
        raise RecipeError(f"train.lr must be a positive finite number, got {resolved['lr']}")
    for group, lr in resolved["group_lr"].items():
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr)):
            raise RecipeError(f"train.group_lr.{group} must be a positive finite number, got {lr!r}")
    if resolved["sample_count"] > MAX_GRID_IMAGES:
        raise RecipeError(f"train.sample_count must be at most {MAX_GRID_IMAGES}, got {resolved['sample_count']}")
    if resolved["optimizer"] not in OPTIMIZERS:
        raise RecipeError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {resolved['optimizer']!r}")
    if resolved["precision"] not in PRECISIONS:
        raise RecipeError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {resolved['precision']!r}")
    if not 0 <= resolved["val_fraction"] <= MAX_VAL_FRACTION:
        raise RecipeError(f"train.val_fraction must be from 0 to {MAX_VAL_FRACTION}, got {resolved['val_fraction']}")
    if resolved["early_stop_patience"] < 0:
        raise RecipeError(f"train.early_stop_patience must not be negative, got {resolved['early_stop_patience']}")
    if resolved["early_stop_patience"] and not resolved["val_fraction"]:
        raise RecipeError(
            "train.early_stop_patience watches val_loss: hold out a validation split with train.val_fraction (e.g. 0.1)"
        )
    resolved["lr_schedule"] = resolve_component(
        name, "train.lr_schedule", "schedules", resolved["lr_schedule"], SCHEDULE_ARGS
    )
    resolved["loggers"] = _resolve_loggers(name, resolved["loggers"], loading)
    return resolved


def _resolve_loggers(recipe: str, loggers: list[Any], loading: bool) -> list[Any]:
    """train.loggers as tables with their loggers' defaults, each logger once. A model file being loaded
    (`loading`) keeps the tables of loggers that are not installed as they are: loading builds none."""
    from vaezoo.plugins.manager import get_registry

    resolved: list[Any] = []
    for item in loggers:
        name = item.get("name") if isinstance(item, dict) else item
        if loading and isinstance(name, str) and not get_registry().find("loggers", name):
            resolved.append(item)
            continue
        table = resolve_component(recipe, "train.loggers", "loggers", item, set())
        if any(isinstance(other, dict) and other.get("name") == table["name"] for other in resolved):
            raise RecipeError(f"recipe {recipe!r}: train.loggers names the logger {table['name']!r} twice")
        resolved.append(table)
    return resolved


def _check_type(where: str, value: Any, default: Any) -> Any:
    """`value` coerced to the type of `default` where that is lossless; an error otherwise."""
    if default is None or isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if is_int(value):
            return value
    elif isinstance(default, float):
        if is_int(value) or isinstance(value, float):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    else:
        return value
    raise RecipeError(f"{where} must be {type(default).__name__} like {default!r}, got {value!r}")


def component_parameters(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters a component constructor takes, and whether it takes **kwargs."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, True
    kinds = [param.kind for param in signature.parameters.values()]
    if kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        return {}, False  # an inherited nn.Module.__init__(*args, **kwargs): takes no recipe keys
    params = {}
    var_keyword = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            params[param.name] = param
    return params, var_keyword


def _toml_default(value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if (
        isinstance(value, (bool, int, float, str))
        or isinstance(value, list)
        and all(isinstance(v, (bool, int, float, str)) for v in value)
    ):
        return value
    return None


def resolve_component(
    recipe: str, key: str, kind: str, table: Any, framework: set[str] = FRAMEWORK_ARGS, *, source: str | None = None
) -> dict[str, Any]:
    """A component (or model) table with the constructor's TOML-friendly defaults filled in; every
    key is checked against the constructor (`framework`: the arguments vaezoo passes itself). Its
    name is spelled as `Registry.spelling` does: qualified where another distribution has the name
    (`source`: the distribution whose entry a short name means first)."""
    from vaezoo.plugins.manager import get_registry

    if isinstance(table, str):
        table = {"name": table}
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise RecipeError(f'recipe {recipe!r}: {key} must be a table with a name, e.g. {key} = {{ name = "..." }}')
    registry = get_registry()
    entry = registry.get(kind, table["name"], source)
    target = entry.load()
    params, var_keyword = component_parameters(target)
    resolved = {"name": registry.spelling(entry)}
    for arg, param in params.items():
        if arg not in framework and param.default is not inspect.Parameter.empty:
            default = _toml_default(param.default)
            if default is not None:
                resolved[arg] = default
    for arg, value in table.items():
        if arg == "name":
            continue
        if arg in framework:
            raise RecipeError(
                f"recipe {recipe!r}: {key}.{arg} is set by vaezoo itself (latent_dim and the components go "
                "at the top level)"
            )
        if arg not in params and not var_keyword:
            allowed = ", ".join(a for a in params if a not in framework) or "none"
            raise RecipeError(
                f"recipe {recipe!r}: unknown key {key}.{arg} for {key} {table['name']!r} of "
                f"{entry.plugin.distribution} (accepted: {allowed})"
            )
        resolved[arg] = _check_type(f"{key}.{arg}", value, resolved.get(arg))
    return resolved
