"""The plugin API's version, and the requirement a plugin declares on it.

`PLUGIN_API` is "MAJOR.MINOR": a minor release of the API adds (a hook, an optional declaration); a
major one changes or removes something a plugin relies on. A plugin states which versions it was
written for in its entry-point module, `VAEZOO_PLUGIN_API = ">=1,<2"`: comma-separated clauses of
`>=`, `>`, `<=`, `<`, `==`, `!=` or `~=` and a version `MAJOR` or `MAJOR.MINOR` (`==1.*` too). A plugin
whose requirement is not met is reported failed with one line, and the others keep working. A
plugin without one is taken as written for the unversioned API of vaezoo 0.1 and 0.2: it loads, and
its model families get a deprecation warning for each declaration that 0.3 added and they lack."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from types import ModuleType

PLUGIN_API = "1.2"  # 1.0: vaezoo 0.3; 1.1: vaezoo 0.4 (samplers, schedules, model_files); 1.2: vaezoo 0.5 (loggers)
ATTRIBUTE = "VAEZOO_PLUGIN_API"  # the entry-point module's requirement
EXAMPLE = ">=1,<2"
MAX_REQUIREMENT = 100  # characters: a requirement is short text, shown in `vaezoo plugins`

_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|~=|>|<)\s*(\d{1,4})(?:\.(\d{1,4}|\*))?\s*")
_COMPARE: dict[str, Callable[[tuple[int, int], tuple[int, int]], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


def declared_requirement(module: ModuleType | object) -> object:
    """The module's `VAEZOO_PLUGIN_API`, or None when it declares none."""
    return getattr(module, ATTRIBUTE, None)


def shown(requirement: object) -> str:
    """The requirement as `vaezoo plugins` shows it: its text, or the repr of what is not text, clipped."""
    text = requirement if isinstance(requirement, str) else repr(requirement)
    return text[:MAX_REQUIREMENT]


def _version(text: str = PLUGIN_API) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _clause_met(op: str, major: str, minor: str | None, have: tuple[int, int]) -> bool:
    if minor == "*":  # ==1.* / !=1.*: the whole major version
        return (have[0] == int(major)) == (op == "==")
    want = (int(major), int(minor or 0))
    if op == "~=":  # compatible release: ~=1.2 is >=1.2,<2 and ~=1 is >=1
        return have >= want and (minor is None or have[0] == want[0])
    return _COMPARE[op](have, want)


def requirement_problem(requirement: object, api: str = PLUGIN_API) -> str | None:
    """Why plugin API `api` does not satisfy `requirement` (a module's VAEZOO_PLUGIN_API), in words
    that end a one-line warning, or None when it does."""
    if not isinstance(requirement, str) or not 0 < len(requirement) <= MAX_REQUIREMENT:
        return f"its {ATTRIBUTE} = {shown(requirement)} is not a requirement (a string such as {EXAMPLE!r})"
    clauses = [_CLAUSE.fullmatch(part) for part in requirement.split(",")]
    if not all(clauses) or any(c[3] == "*" and c[1] not in ("==", "!=") for c in clauses if c):
        return (
            f"its {ATTRIBUTE} = {requirement!r} is not a requirement vaezoo reads (clauses such as '>=1' and "
            f"'<2' joined by commas, e.g. {EXAMPLE!r})"
        )
    have = _version(api)
    if all(_clause_met(c[1], c[2], c[3], have) for c in clauses if c):
        return None
    from vaezoo import __version__

    return f"it needs plugin API {requirement}, and vaezoo {__version__} has plugin API {api}"


def check_plugin(module: ModuleType | object, distribution: str) -> tuple[str | None, str | None]:
    """`module`'s requirement as `vaezoo plugins` shows it (None: it declares none), and why this vaezoo
    does not meet it, ending with what to do (None: met, or none declared)."""
    requirement = declared_requirement(module)
    if requirement is None:
        return None, None
    problem = requirement_problem(requirement)
    if problem is not None:
        problem += (
            f"; install a release of {distribution} written for plugin API {_version()[0]}.x "
            "(docs/plugins.md, Plugin API versions)"
        )
    return shown(requirement), problem
