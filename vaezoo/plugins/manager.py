"""Plugin manager: finds plugins through the `vaezoo` entry-point group (defaults included), honours
VAEZOO_DISABLE_PLUGINS, records plugins that fail, and fills the registry once per process."""

from __future__ import annotations

import os
import sys
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from vaezoo.errors import BadRegistration, DuplicateName, PluginError, UnknownName, printable
from vaezoo.plugins import hookspecs
from vaezoo.plugins.api_version import check_plugin
from vaezoo.plugins.kinds import KINDS
from vaezoo.plugins.registry import PluginInfo, Registry

GROUP = "vaezoo"

_registry: Registry | None = None


def disabled_plugins() -> set[str]:
    """Plugin names listed in VAEZOO_DISABLE_PLUGINS (comma-separated)."""
    return {name.strip() for name in os.environ.get("VAEZOO_DISABLE_PLUGINS", "").split(",") if name.strip()}


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


def _why(error: BaseException) -> str:
    """`Type: first line of the message`, whatever the exception's `__str__` does."""
    try:
        message = str(error)
    except Exception:
        message = "(a message that cannot be shown)"
    first = (message.splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _fail(info: PluginInfo, error: str, registry: Registry | None = None) -> None:
    """Mark the plugin failed, warn in one line and forget what it registered (`registry`: it had
    loaded, and one of its hooks failed)."""
    info.error = error
    if registry is not None:
        registry.drop(info)
    how = "failed" if registry is not None else "failed to load"
    print(printable(f"vaezoo: warning: plugin {info.name!r} ({info.distribution}) {how}: {error}"), file=sys.stderr)


def _load_plugins(manager: pluggy.PluginManager) -> list[PluginInfo]:
    """Import every enabled entry point; one that fails is recorded and warned about, never fatal."""
    disabled = disabled_plugins()
    infos: list[PluginInfo] = []
    seen: dict[str, PluginInfo] = {}
    dists: dict[object, tuple[str, str]] = {}
    for entry_point in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        if entry_point.name in disabled:
            continue
        info = _info(entry_point, dists)
        first = seen.get(entry_point.name)
        if first is not None:  # the same distribution found twice on sys.path is harmless
            if first.distribution != info.distribution:
                raise PluginError(
                    f"two plugins are named {info.name!r}: one from {first.distribution} and one from "
                    f"{info.distribution}; "
                    f"uninstall one of them (VAEZOO_DISABLE_PLUGINS={info.name} switches both off)"
                )
            continue
        seen[entry_point.name] = info
        problem = None
        try:
            module = entry_point.load()
            info.api_requirement, problem = check_plugin(module, info.distribution)
            if problem is None:
                manager.register(module, name=entry_point.name)
                manager.check_pending()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: still stops vaezoo
            raise
        except BaseException as error:  # a broken plugin (even one calling sys.exit) must not take the others down
            plugin = manager.get_plugin(entry_point.name)
            if plugin is not None:
                manager.unregister(plugin)
            problem = _why(error)
        if problem is not None:
            _fail(info, problem)
        infos.append(info)
    return infos


def build_registry() -> Registry:
    """A fresh registry filled from all enabled plugins."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    registry.plugins = _load_plugins(manager)
    by_name = {info.name: info for info in registry.plugins}
    for kind in KINDS:
        caller = getattr(manager.hook, hookspecs.HOOKS[kind])
        for impl in reversed(caller.get_hookimpls()):  # registration order
            info = by_name[impl.plugin_name]
            if info.error:
                continue
            register = partial(_register, registry, kind, info)
            try:
                impl.function(register=register)
            except (KeyboardInterrupt, DuplicateName):  # an interrupt, or two plugins with one name: stop
                raise
            except BadRegistration as error:
                _fail(info, f"{hookspecs.HOOKS[kind]} {str(error).removeprefix(f'plugin {info.name!r} ')}", registry)
            except BaseException as error:  # SystemExit and other BaseExceptions too: isolate the plugin
                _fail(info, f"{hookspecs.HOOKS[kind]} raised {_why(error)}", registry)
    return registry


def _register(
    registry: Registry, kind: str, info: PluginInfo, name: str, target: object, *, summary: str | None = None
) -> None:
    """The `register` callable a hook receives; once its plugin has failed it registers nothing."""
    if info.error is None:
        registry.add(kind, name, target, info, summary)


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def reset_registry() -> None:
    """Forget the registry so the next `get_registry()` reloads plugins (tests, env changes)."""
    global _registry
    _registry = None


def list_components(kind: str | None = None, pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered recipes and components as dicts (`name`, `kind`, `summary`, `plugin`, ...)."""
    if kind is not None and kind not in KINDS:
        raise UnknownName(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    return [entry.as_dict() for entry in get_registry().list(kind, pattern)]
