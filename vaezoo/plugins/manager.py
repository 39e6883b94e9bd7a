"""Plugin manager: finds plugins through the `vaezoo` entry-point group (defaults included), honours
VAEZOO_DISABLE_PLUGINS, records plugins that fail, and fills the registry once per process. Plugins are
known to pluggy by their qualified name `DISTRIBUTION:PLUGIN`: two distributions may both declare a
plugin `wae`, and both load."""

from __future__ import annotations

import os
import sys
import traceback
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from vaezoo.errors import BadRegistration, DuplicateName, UnknownName, error_line, printable
from vaezoo.plugins import hookspecs
from vaezoo.plugins.api_version import check_plugin
from vaezoo.plugins.kinds import KINDS
from vaezoo.plugins.registry import PluginInfo, Registry, canonical, split_name

GROUP = "vaezoo"

_registry: Registry | None = None


def disabled_plugins() -> set[str]:
    """Plugin names listed in VAEZOO_DISABLE_PLUGINS (comma-separated): a short name switches off every
    plugin of that name, a qualified `DISTRIBUTION:PLUGIN` only that distribution's."""
    return {name.strip() for name in os.environ.get("VAEZOO_DISABLE_PLUGINS", "").split(",") if name.strip()}


def disabled_by(plugin: str, distribution: str, disabled: set[str]) -> str | None:
    """The item of `disabled` (see `disabled_plugins`) that switches off plugin `plugin` of
    `distribution`, or None."""
    for item in sorted(disabled):
        item_distribution, name = split_name(item)
        if name == plugin and (item_distribution is None or canonical(item_distribution) == canonical(distribution)):
            return item
    return None


def _info(entry_point: EntryPoint, dists: dict[object, tuple[str, str]]) -> PluginInfo:
    dist = entry_point.dist
    if dist is None:
        return PluginInfo(name=entry_point.name, distribution="unknown", version="unknown")
    key = getattr(dist, "_path", None) or id(dist)
    if key not in dists:  # each .name / .version parses the METADATA file again: once per distribution
        metadata = dist.metadata
        dists[key] = (metadata["Name"], metadata["Version"])
    name, version = dists[key]
    return PluginInfo(name=entry_point.name, distribution=name or "unknown", version=version or "unknown")


def _fail(info: PluginInfo, error: str, registry: Registry | None = None) -> None:
    """Mark the plugin failed, warn in one line and forget what it registered (`registry`: it had
    loaded, and one of its hooks failed)."""
    info.error = error
    if registry is not None:
        registry.drop(info)
    how = "failed" if registry is not None else "failed to load"
    print(printable(f"vaezoo: warning: plugin {info.name!r} ({info.distribution}) {how}: {error}"), file=sys.stderr)


def _load_plugins(manager: pluggy.PluginManager, registry: Registry) -> None:
    """Import every enabled entry point into `registry.plugins` (the disabled ones go to
    `registry.disabled`); one that fails is recorded and warned about, never fatal."""
    disabled = disabled_plugins()
    dists: dict[object, tuple[str, str]] = {}
    found = sorted(
        ((_info(entry_point, dists), entry_point) for entry_point in entry_points(group=GROUP)),
        key=lambda pair: (pair[0].name, canonical(pair[0].distribution)),
    )
    seen: set[str] = set()
    for info, entry_point in found:
        key = f"{canonical(info.distribution)}:{info.name}"
        if key in seen:  # the same distribution found twice on sys.path: the first one is the one imported
            continue
        seen.add(key)
        if disabled_by(info.name, info.distribution, disabled):
            registry.disabled.append(info)
            continue
        problem = None
        try:
            module = entry_point.load()
            info.api_requirement, problem = check_plugin(module, info.distribution)
            if problem is None:
                manager.register(module, name=info.qualified_name)
                manager.check_pending()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: still stops vaezoo
            raise
        except BaseException as error:  # a broken plugin (even one calling sys.exit) must not take the others down
            plugin = manager.get_plugin(info.qualified_name)
            if plugin is not None:
                manager.unregister(plugin)
            problem = error_line(error)
        if problem is not None:
            _fail(info, problem)
        registry.plugins.append(info)


def build_registry() -> Registry:
    """A fresh registry filled from all enabled plugins."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    _load_plugins(manager, registry)
    by_name = {info.qualified_name: info for info in registry.plugins}
    for kind in KINDS:
        caller = getattr(manager.hook, hookspecs.HOOKS[kind])
        for impl in caller.get_hookimpls():  # registration order (pluggy calls them last first)
            info = by_name[impl.plugin_name]
            if info.error:
                continue
            register = partial(_register, registry, kind, info)
            try:
                impl.function(register=register)
            except KeyboardInterrupt:
                raise
            except (BadRegistration, DuplicateName) as error:
                _fail(info, f"{hookspecs.HOOKS[kind]} {str(error).removeprefix(f'plugin {info.name!r} ')}", registry)
            except BaseException as error:  # SystemExit and other BaseExceptions too: isolate the plugin
                _fail(info, f"{hookspecs.HOOKS[kind]} raised {error_line(error)}", registry)
    return registry


def _register(
    registry: Registry, kind: str, info: PluginInfo, name: str, target: object, *, summary: str | None = None
) -> None:
    """The `register` callable a hook receives; once its plugin has failed it registers nothing."""
    if info.error is None:
        registry.add(kind, name, target, info, summary)


def get_registry() -> Registry:
    """The process-wide registry of recipes and components, built from the installed plugins on first use:
    `get(kind, name)` the entry a short or qualified (`DISTRIBUTION:NAME`) name names (`kind` as in `vaezoo
    list`: "models", "encoders", ...), `find(kind, name)`
    every entry of a name, `list(kind, pattern)` the entries of a kind; an entry's `load()` gives its object."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def reset_registry() -> None:
    """Forget the registry so the next `get_registry()` reloads plugins (tests, env changes)."""
    global _registry
    _registry = None


def plugin_code(error: BaseException) -> str | None:
    """Where in a plugin's code `error` was raised, as "FUNCTION (FILE:LINE) of plugin distribution D": the
    innermost frame of its traceback that runs a module of a package that registered components; None
    when no frame does (vaezoo's own code raised it, or a library that vaezoo called)."""
    packages: dict[str, str] = {}  # top-level package -> the distribution that registered a component from it
    for names in get_registry().entries.values():
        for entries in names.values():
            for entry in entries:
                target = entry.target
                module = target.partition(":")[0] if isinstance(target, str) else getattr(target, "__module__", None)
                if isinstance(module, str) and entry.kind != "recipes":
                    packages.setdefault(module.partition(".")[0], entry.plugin.distribution)
    packages.pop("vaezoo", None)  # the core is never a plugin
    for frame, line in reversed(list(traceback.walk_tb(error.__traceback__))):
        module = frame.f_globals.get("__name__")
        distribution = packages.get(module.partition(".")[0]) if isinstance(module, str) else None
        if distribution is not None:
            where = f"{os.path.basename(frame.f_code.co_filename)}:{line}"
            return f"{frame.f_code.co_qualname} ({where}) of plugin distribution {distribution}"
    return None


def list_components(kind: str | None = None, pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered recipes and components as dicts (`name`, `kind`, `summary`, `plugin`, ...)."""
    if kind is not None and kind not in KINDS:
        raise UnknownName(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    return [entry.as_dict() for entry in get_registry().list(kind, pattern)]
