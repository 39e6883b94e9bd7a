"""The documentation keeps up with the code: every hook has a heading in docs/plugins.md and every
recipe of registry.toml a heading in docs/recipes.md."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest

from vaezoo.plugins import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"
REGISTRY = Path(__file__).resolve().parents[1] / "registry.toml"

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "vaezoo_spec"))
RECIPES = sorted(tomllib.loads(REGISTRY.read_text(encoding="utf-8")))


def headings(path: Path) -> set[str]:
    """The text of every Markdown heading, without #'s and backquotes."""
    return {
        m.group(1).strip().strip("`")
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.M)
    }


def test_hooks_are_found():
    assert set(HOOKS) == set(hookspecs.HOOKS.values())


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_in_plugins_md(hook):
    assert hook in headings(DOCS / "plugins.md"), (
        f"docs/plugins.md has no heading for the hook {hook}: add '### `{hook}`' with its signature and an example"
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_has_a_heading_in_recipes_md(recipe):
    assert recipe in headings(DOCS / "recipes.md"), (
        f"docs/recipes.md has no heading for the recipe {recipe}: add '### `{recipe}`' describing it"
    )
