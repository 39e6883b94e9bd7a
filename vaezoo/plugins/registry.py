"""One registry per kind of component: short name -> the entries of each distribution that registers it,
with qualified names (`DISTRIBUTION:NAME`), glob listing and errors for unknown and ambiguous names."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from vaezoo.errors import AmbiguousName, BadRegistration, DuplicateName, PluginError, UnknownName, error_line
from vaezoo.plugins.kinds import KINDS

MAX_NAME = 100  # characters in a registered name
_DISTRIBUTION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")  # a PEP 508 distribution name


def valid_distribution(name: Any) -> bool:
    """Whether `name` is a distribution name that may go into a `pip install` line."""
    return isinstance(name, str) and bool(_DISTRIBUTION.fullmatch(name)) and name.lower() != "unknown"


ZOO = "vaezoo"  # the distribution of the default plugins: a recipe without a model table means its `vae`


def canonical(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, each run of `-_.` one `-`."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def split_name(name: str) -> tuple[str | None, str]:
    """`DISTRIBUTION:NAME` -> (DISTRIBUTION, NAME); a short name -> (None, NAME)."""
    distribution, sep, short = name.partition(":")
    return (distribution, short) if sep else (None, name)


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

    @property
    def qualified_name(self) -> str:
        """`DISTRIBUTION:PLUGIN`, unique among the installed plugins."""
        return f"{self.distribution}:{self.name}"

    def is_from(self, distribution: str) -> bool:
        """Whether this plugin belongs to `distribution` (compared as pip compares names)."""
        return canonical(self.distribution) == canonical(distribution)


@dataclass
class Entry:
    """One registered recipe or component and the plugin that provides it."""

    kind: str
    name: str
    target: Any  # a class, a factory, a recipe table, or "module:attribute" imported on first use
    plugin: PluginInfo
    summary_text: str | None = None

    @property
    def qualified_name(self) -> str:
        """`DISTRIBUTION:NAME`: this entry whatever else is installed."""
        return f"{self.plugin.distribution}:{self.name}"

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
                    f"{self.target!r}, which does not import: {error_line(error)}"
                ) from error
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
            "qualified_name": self.qualified_name,
            "kind": KINDS[self.kind],
            "summary": self.summary,
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
        }


class Registry:
    """All registered components, by kind and short name (one entry per distribution that registers
    the name), plus the plugins that were loaded (or failed to) and those switched off."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
        self.plugins: list[PluginInfo] = []
        self.disabled: list[PluginInfo] = []  # switched off by VAEZOO_DISABLE_PLUGINS: never imported

    def add(self, kind: str, name: str, target: Any, plugin: PluginInfo, summary: str | None = None) -> None:
        """Register `target` as `name`; BadRegistration for a name, object or summary that vaezoo
        cannot use, DuplicateName when a plugin of the same distribution has the name already
        (another distribution's entry of that name lives beside it)."""
        problem = registration_problem(kind, name, target, summary)
        if problem:
            raise BadRegistration(f"plugin {plugin.name!r} registered {problem}")
        entries = self.entries[kind].setdefault(name, [])
        existing = next((entry for entry in entries if entry.plugin.is_from(plugin.distribution)), None)
        if existing is not None:
            raise DuplicateName(
                f"{KINDS[kind]} {name!r} is registered twice by distribution {plugin.distribution}: by plugin "
                f"{existing.plugin.name!r} and by plugin {plugin.name!r}"
            )
        entries.append(Entry(kind, name, target, plugin, summary))
        plugin.registers.setdefault(kind, []).append(name)

    def drop(self, plugin: PluginInfo) -> None:
        """Forget everything `plugin` registered (it failed part-way)."""
        for names in self.entries.values():
            for name, entries in list(names.items()):
                entries[:] = [entry for entry in entries if entry.plugin is not plugin]
                if not entries:
                    del names[name]
        plugin.registers.clear()

    def find(self, kind: str, name: str) -> list[Entry]:
        """The entries a short name or a qualified `DISTRIBUTION:NAME` names (several for a short
        name that several distributions register; none for an unknown name)."""
        distribution, short = split_name(name)
        entries = self.entries[kind].get(short, [])
        if distribution is None:
            return list(entries)
        return [entry for entry in entries if entry.plugin.is_from(distribution)]

    def get(self, kind: str, name: str, source: str | None = None) -> Entry:
        """The entry `name` (short or `DISTRIBUTION:NAME`) names. A short name means the entry of
        `source` (the distribution of the recipe or file that uses it) where it has one, else the only
        entry of that name. UnknownName lists close names; AmbiguousName the qualified ones."""
        what = KINDS[kind]
        found = self.find(kind, name)
        if split_name(name)[0] is None and source is not None:
            own = [entry for entry in found if entry.plugin.is_from(source)]
            if own:
                return own[0]
            switched_off = self.switched_off(source)
            if found and switched_off:  # never a silent swap for the component of a plugin switched off
                raise UnknownName(
                    f"{what} {name!r} of {source} is not available: plugins of {source} are disabled or "
                    f"failed ({', '.join(map(repr, switched_off))}; `vaezoo plugins`); to use another "
                    f"distribution's, name it in full: {', '.join(e.qualified_name for e in found)}"
                )
        if len(found) == 1:
            return found[0]
        if found:
            found.sort(key=lambda entry: canonical(entry.plugin.distribution))
            names = ", ".join(f"{entry.qualified_name} (plugin {entry.plugin.name!r})" for entry in found)
            raise AmbiguousName(
                f"{what} {name!r} is ambiguous: {len(found)} plugin distributions register it: {names}; name one "
                f"in full, e.g. {found[0].qualified_name!r} (`vaezoo list {kind}` shows them)"
            )
        raise self._unknown(kind, name)

    def _unknown(self, kind: str, name: str) -> UnknownName:
        """The error for a name nothing registers: close names, or the distribution to install."""
        what = KINDS[kind]
        distribution, short = split_name(name)
        if distribution is not None and not any(info.is_from(distribution) for info in self.plugins):
            install = f"`pip install {distribution}`; " if valid_distribution(distribution) else ""
            return UnknownName(
                f"unknown {what} {name!r}: no plugin of distribution {distribution!r} is installed "
                f"({install}`vaezoo plugins` lists those that are)"
            )
        close = difflib.get_close_matches(short, list(self.entries[kind]), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return UnknownName(
            f"unknown {what} {name!r}: {hint}`vaezoo list {kind}` shows the "
            f"{sum(map(len, self.entries[kind].values()))} available; a plugin may provide it (`vaezoo plugins`)"
        )

    def switched_off(self, distribution: str) -> list[str]:
        """The names of `distribution`'s plugins that are disabled or failed."""
        infos = [*self.disabled, *(info for info in self.plugins if info.error)]
        return [info.name for info in infos if info.is_from(distribution)]

    def spelling(self, entry: Entry) -> str:
        """How a resolved recipe names `entry`: its short name where no other distribution registers
        that name, its qualified name where one does."""
        return entry.name if len(self.entries[entry.kind].get(entry.name, [])) <= 1 else entry.qualified_name

    def list(self, kind: str | None = None, pattern: str | None = None) -> list[Entry]:
        """Entries of one kind (or all), optionally filtered by a glob on the name (on the qualified name
        for a glob with a `:`, e.g. `vaezoo-iaf:*`)."""
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            for name in sorted(self.entries[k]):
                for entry in sorted(self.entries[k][name], key=lambda e: canonical(e.plugin.distribution)):
                    shown = entry.qualified_name if ":" in (pattern or "") else name
                    if pattern is None or fnmatch.fnmatchcase(shown, pattern):
                        found.append(entry)
        return found


def registration_problem(kind: str, name: object, target: object, summary: object) -> str | None:
    """What is wrong with `register(name, target, summary=summary)` for `kind`, or None."""
    what = KINDS[kind]
    article = "an" if what[0] in "aeiou" else "a"
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_NAME
        or not name.isprintable()
        or name != name.strip()
        or ":" in name
    ):
        shown = repr(name) if isinstance(name, str) else f"of type {type(name).__name__}"
        return (
            f"{article} {what} with an invalid name {shown[: MAX_NAME + 2]} (a name is 1 to {MAX_NAME} printable "
            "characters, without ':', which separates a qualified name's distribution)"
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
