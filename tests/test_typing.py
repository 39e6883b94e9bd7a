"""Type checkers see vaezoo's public names: `vaezoo/__init__.py` loads them lazily through a module
`__getattr__`, which a checker cannot follow, so `vaezoo/__init__.pyi` declares them. mypy itself runs in CI
(`.ci/run`, configured in pyproject.toml); this checks that the stub and the lazy table name the same things."""

from __future__ import annotations

import ast
from pathlib import Path

import vaezoo

STUB = Path(vaezoo.__file__).with_suffix(".pyi")


def stub_imports() -> dict[str, str]:
    """Each name the stub re-exports (`from MODULE import NAME as NAME`) -> MODULE."""
    found = {}
    for node in ast.parse(STUB.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaezoo"):
            for alias in node.names:
                assert alias.asname == alias.name, f"the stub re-exports {alias.name} as {alias.asname}"
                found[alias.name] = node.module
    return found


def test_the_stub_declares_every_lazy_name_from_its_module() -> None:
    assert stub_imports() == vaezoo._LAZY


def test_the_stub_declares_the_eager_names_and_the_package_is_typed() -> None:
    declared = {
        node.target.id
        for node in ast.parse(STUB.read_text(encoding="utf-8")).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    assert set(vaezoo.__all__) - set(vaezoo._LAZY) <= declared
    assert (STUB.parent / "py.typed").is_file()  # PEP 561: a plugin's checker reads vaezoo's annotations
