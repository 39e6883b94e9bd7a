"""One registry per kind of component: name -> entry, with glob listing and duplicate errors."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from vaezoo.errors import BadRegistration, DuplicateName, PluginError, UnknownName
from vaezoo.plugins.kinds import KINDS

MAX_NAME = 100  # characters in a registered name


@dataclass
class PluginInfo:
    """A plugin found through the `vaezoo` entry-point group."""

    name: str
    distribution: str
    version: str
    error: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)
    # its module's VAEZOO_PLUGIN_API as shown (api_version.check_plugin); None: declares none (written for 0.2)
    api_requirement: str | None = None
    deprecations: set[tuple[str, str]] = field(default_factory=set)  # (family, declaration) warned about, once each


@dataclass
class Entry:
    """One registered recipe or component and the plugin that provides it."""

    kind: str
    name: str
    target: Any  # a class, a factory, a recipe table, or "module:attribute" imported on first use
    plugin: PluginInfo
    summary_text: str | None = None

    def load(self) -> Any:
        """The class, factory or recipe table, imported now if it was registered as a string."""
        if isinstance(self.target, str) and self.kind != "recipes":
            module, _, attribute = self.target.partition(":")
            try:
                self.target = getattr(import_module(module), attribute)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # a plugin's code (even sys.exit) must not take vaezoo down
                raise PluginError(
                    f"plugin {self.plugin.name!r} ({self.plugin.distribution}) registers {KINDS[self.kind]} "
                    f"{self.name!r} as "
                    f"{self.target!r}, which does not import: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}"
                ) from None
        return self.target

    @property
    def summary(self) -> str:
        if self.summary_text is not None:
            return self.summary_text
        if isinstance(self.target, dict):
            summary = self.target.get("summary", "")
            return summary if isinstance(summary, str) else ""
        if isinstance(self.target, str):
            return ""
        try:
            return (inspect.getdoc(self.target) or "").split("\n", 1)[0]
        except Exception:  # a class whose __doc__ is not plain data
            return ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": KINDS[self.kind],
            "summary": self.summary,
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
        }


class Registry:
    """All registered components, by kind, plus the plugins that were loaded (or failed to)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.plugins: list[PluginInfo] = []

    def add(self, kind: str, name: str, target: Any, plugin: PluginInfo, summary: str | None = None) -> None:
        """Register `target` as `name`; BadRegistration for a name, object or summary that vaezoo
        cannot use, DuplicateName when another plugin has the name already."""
        problem = registration_problem(kind, name, target, summary)
        if problem:
            raise BadRegistration(f"plugin {plugin.name!r} registered {problem}")
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise DuplicateName(
                f"{KINDS[kind]} {name!r} is registered twice: by plugin {existing.plugin.name!r} "
                f"({existing.plugin.distribution}) and by plugin {plugin.name!r} ({plugin.distribution}); "
                f"uninstall one or disable it with VAEZOO_DISABLE_PLUGINS={plugin.name}"
            )
        self.entries[kind][name] = Entry(kind, name, target, plugin, summary)
        plugin.registers.setdefault(kind, []).append(name)

    def drop(self, plugin: PluginInfo) -> None:
        """Forget everything `plugin` registered (it failed part-way)."""
        for entries in self.entries.values():
            for name in [name for name, entry in entries.items() if entry.plugin is plugin]:
                del entries[name]
        plugin.registers.clear()

    def get(self, kind: str, name: str) -> Entry:
        """The entry, or an error that lists close names and how to see them all."""
        try:
            return self.entries[kind][name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, list(self.entries[kind]), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownName(
            f"unknown {KINDS[kind]} {name!r}: {hint}`vaezoo list {kind}` shows the "
            f"{len(self.entries[kind])} available; a plugin may provide it (`vaezoo plugins`)"
        )

    def list(self, kind: str | None = None, pattern: str | None = None) -> list[Entry]:
        """Entries of one kind (or all), optionally filtered by a glob on the name."""
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            for name in sorted(self.entries[k]):
                if pattern is None or fnmatch.fnmatchcase(name, pattern):
                    found.append(self.entries[k][name])
        return found


def registration_problem(kind: str, name: object, target: object, summary: object) -> str | None:
    """What is wrong with `register(name, target, summary=summary)` for `kind`, or None."""
    what = KINDS[kind]
    article = "an" if what[0] in "aeiou" else "a"
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable() or name != name.strip():
        shown = repr(name) if isinstance(name, str) else f"of type {type(name).__name__}"
        return (
            f"{article} {what} with an invalid name {shown[: MAX_NAME + 2]} (a name is 1 to {MAX_NAME} printable "
            "characters)"
        )
    if summary is not None and not isinstance(summary, str):
        return f"{what} {name!r} with a summary of type {type(summary).__name__} (a summary is a string)"
    if kind == "recipes":
        if not isinstance(target, dict):
            return f"recipe {name!r} as a {type(target).__name__} (a recipe is a table: a dict)"
        if not isinstance(target.get("summary", ""), str):
            return f"recipe {name!r} with a summary of type {type(target['summary']).__name__} (a summary is a string)"
    elif isinstance(target, str):
        module, _, attribute = target.partition(":")
        if not module or not attribute:
            return f"{what} {name!r} as {target[:200]!r} (a string target is 'module:attribute')"
    elif not callable(target):
        return f"{what} {name!r} as a {type(target).__name__} (a class, a factory or 'module:attribute')"
    return None
