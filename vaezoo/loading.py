"""Loading a model file: its name resolved (a path, `hf://ORG/NAME[@REV]` or URL), the plugins its
records name checked, the model rebuilt from its recipe, its weights filled in and put on a device.
It puts the floors together (files/ reads the bytes, sharing/ the Hub names, recipes/ builds), so it
sits at the api floor beside api.py. docs/checkpoints.md"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from vaezoo.components import Model
from vaezoo.errors import CheckpointError, MissingPlugin, PluginFailed, VaezooError, error_line, first_line, printable
from vaezoo.files.model_file import RECORD_KINDS, check_sizes, load_weights, read_tensors
from vaezoo.files.model_header import family_of, objective_of, read_metadata, shown, valid_distribution, valid_version
from vaezoo.plugins.manager import disabled_by, disabled_plugins, get_registry, plugin_code
from vaezoo.plugins.registry import Entry, split_name
from vaezoo.recipes.build import Dependency, build_model, model_file_keys
from vaezoo.recipes.resolve import validate
from vaezoo.sharing.hub import local_model_path
from vaezoo.trainer.devices import resolve_device


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Rebuild the model saved in `path` (a path, `hf://ORG/NAME[@REV]` or URL) on `device`, in eval mode.
    `model.recipe` (the resolved recipe it was trained with) and `model.metadata` (the file's `vaezoo.*`
    metadata) tell what it is."""
    path = local_model_path(path)
    metadata, data = read_metadata(path)
    check_plugins(metadata, path)  # before anything is built: a missing distribution is named first
    tensors = read_tensors(data, path)
    with _building(path):
        on_meta = build_on_meta(lambda: rebuild(metadata, path))
    check_sizes(on_meta, tensors, path)  # before any memory is taken
    with _building(path):
        model = rebuild(metadata, path)
    load_weights(model, tensors, path)
    check_objective(model, metadata, path)
    return model.to(resolve_device(str(device))).eval()


def check_plugins(
    metadata: Mapping[str, Any],
    path: Path | str,
    kinds: tuple[str, ...] = ("model", "encoder", "decoder", "prior", "loss"),
) -> dict[str, Entry]:
    """The registry entries the file's component records name, by recipe key: each record's name from
    the distribution it records (files of vaezoo 0.1 to 0.3 record `vaezoo` for the zoo's own), never
    another distribution's entry of that name. Each component of `kinds` must be there (the dataset only
    when data are read: sampling needs no dataset plugin); if one is not, a MissingPlugin names the
    distribution to install (a `pip install` line only for a valid distribution name: the file never
    chooses pip's options). A record whose distribution is no valid name is looked up by its name."""
    registry = get_registry()
    found: dict[str, Entry] = {}
    for record in metadata["components"]:
        kind = RECORD_KINDS.get(record.get("kind"), "")
        if kind and record["kind"] not in kinds and record["kind"] != "dataset":
            continue
        distribution, version, name = record.get("distribution"), record.get("version"), record.get("name")
        qualified = f"{distribution}:{name}" if valid_distribution(distribution) else str(name)
        entries = registry.find(kind, qualified) if kind else []
        if entries:  # several only for a record without a valid distribution: the recipe's names decide
            if len(entries) == 1:
                found[record["kind"]] = entries[0]
            continue
        if kind and record["kind"] not in kinds:
            continue  # the dataset, not needed now
        plugin = record.get("plugin")
        item = disabled_by(plugin, str(distribution), disabled_plugins()) if isinstance(plugin, str) else None
        disabled = f" (or remove {shown(item)} from VAEZOO_DISABLE_PLUGINS)" if item else ""
        needs = f"{path} needs {record['kind'] if kind else shown(record.get('kind'))} {shown(name)}"
        if valid_distribution(distribution):
            pinned = f" (version {version})" if valid_version(version) else ""
            raise MissingPlugin(
                f"{needs} from plugin distribution {distribution!r}{pinned}: `pip install {distribution}`{disabled}"
            )
        raise MissingPlugin(
            f"{needs} from plugin {shown(plugin)}, whose distribution name "
            f"{shown(distribution)} is unknown or not valid: install that plugin yourself{disabled}"
        )
    return found


def recipe_with_provenance(metadata: Mapping[str, Any], entries: Mapping[str, Entry]) -> dict[str, Any]:
    """A file's recipe whose component names name the `entries` its records chose (`check_plugins`),
    spelled as `Registry.spelling` does, and a component whose distribution is not here (the dataset:
    sampling needs none) by its qualified name: another distribution's entry of a name is never used."""
    registry = get_registry()
    table = dict(metadata["recipe"])
    for record in metadata["components"]:
        key, distribution = record.get("kind"), record.get("distribution")
        part = table.get(key)
        if not (isinstance(part, dict) and isinstance(part.get("name"), str)):
            continue
        if split_name(part["name"])[1] != record.get("name"):
            continue  # a record of another name (a damaged file): the recipe's name is looked up as it is
        if key in entries:
            table[key] = {**part, "name": registry.spelling(entries[key])}
        elif valid_distribution(distribution):
            table[key] = {**part, "name": f"{distribution}:{record['name']}"}
    return table


def check_objective(model: Model, metadata: Mapping[str, Any], path: Path) -> None:
    """The objective and regularizer a file records should be those its family declares; where they
    differ the installed family's declaration wins (it is what eval reports), with one warning line: a
    file written before its plugin declared an objective (a 0.2 plugin, ported since) or relabelled."""
    recorded = objective_of(metadata)
    declared = (model.objective, model.regularizer)
    if "objective" in metadata and recorded != declared:
        print(
            printable(
                f"vaezoo: warning: {path} records objective {shown(recorded[0])} and regularizer "
                f"{shown(recorded[1])}, but model family {shown(family_of(metadata))} installed here declares "
                f"{declared[0]!r} and {declared[1]!r}: the family's declaration is used"
            ),
            file=sys.stderr,
        )


@contextlib.contextmanager
def _building(path: Path) -> Iterator[None]:
    """A recipe from a file that does not validate or build is one CheckpointError naming the file; an
    error raised inside a plugin's code is PluginFailed naming that code, never the file's fault."""
    try:
        yield
    except VaezooError as error:
        raise CheckpointError(
            f"{path}: its recipe does not build with the installed plugins: {first_line(error)}"
        ) from error
    except Exception as error:
        where = None if isinstance(error, RecursionError) else plugin_code(error)  # a file's nesting: the file's
        if where is not None:
            raise PluginFailed(
                f"{path}: building its model raised {error_line(error)} in {where}: a bug in the plugin, not in "
                "the file (run with --debug for the traceback)"
            ) from error
        if not isinstance(error, (KeyError, TypeError, AttributeError, ValueError, RecursionError, OverflowError)):
            raise
        raise CheckpointError(f"{path} is damaged: its recipe does not build ({error_line(error)})") from error


def rebuild(metadata: Mapping[str, Any], path: Path | str) -> Model:
    """The untrained model that checked metadata describe, from the distributions they record, with the
    models it is built on (`vaezoo.dependencies`) rebuilt from the metadata recorded for them: their
    weights are in the file."""
    entries = check_plugins(metadata, path)
    table = recipe_with_provenance(metadata, entries)
    recipe = validate(str(table.get("name", "checkpoint")), table, need_dataset=False)
    family = entries.get("model")
    keys = model_file_keys(family.load(), family.name) if family is not None else ()
    records = metadata.get("dependencies", {})
    foreign = sorted(set(records) - set(keys))
    if foreign:  # never build what the family does not take: the file would decide what vaezoo allocates
        raise CheckpointError(
            f"{path} is damaged: it records a model file under {shown(foreign[0])}, which its family does not take"
        )
    dependencies = {
        key: Dependency(rebuild(record["metadata"], f"{path} (the model file it is built on, {key})"), record)
        for key, record in records.items()
    }
    data = metadata["data"]
    model = build_model(recipe, data["shape"], data.get("classes", []), dependencies)
    model.metadata = metadata
    return model


def build_on_meta(build: Callable[[], Model]) -> Model | None:
    """The model `build()` makes, made on torch's meta device: shapes without memory (None if a plugin
    cannot build there; a VaezooError, e.g. a shape the family cannot take, is raised)."""
    try:
        with torch.device("meta"):
            return build()
    except VaezooError:
        raise
    except Exception:  # e.g. a constructor that reads tensor values: then only the real build can tell
        return None
