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


TESTS = DOCS.parent / "tests"
FILE_REFERENCE = re.compile(r"(test_\w+\.py)(?:::(test_\w+))?")  # tests/FILE.py, FILE.py::NAME
NAME_REFERENCE = re.compile(r"(?<![\w./<:-])(test_\w+)\b(?!\.py|::)")  # a bare test name
NOT_TESTS = {"test_loss"}  # a metric reliability.md names


def defined_tests() -> dict[str, set[str]]:
    """The test functions of each tests/test_*.py file, by file name."""
    return {
        path.name: set(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
        for path in TESTS.glob("test_*.py")
    }


def test_every_test_that_reliability_md_names_exists() -> None:
    """docs/reliability.md names the tests that check each promise (`tests/FILE.py`, `FILE.py::NAME`,
    a bare `test_NAME`): each must exist under that name, wherever tests move."""
    tests, text = defined_tests(), (DOCS / "reliability.md").read_text(encoding="utf-8")
    every = set().union(*tests.values())
    missing = [
        f"{file}::{name}" if name else file
        for file, name in FILE_REFERENCE.findall(text)
        if file not in tests or (name and name not in tests[file])
    ]
    missing += [name for name in NAME_REFERENCE.findall(text) if name not in every and name not in NOT_TESTS]
    assert not missing, f"docs/reliability.md names tests that do not exist: {sorted(set(missing))}"
