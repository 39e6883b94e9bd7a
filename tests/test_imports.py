"""The core's modules import each other one way (recipe -> registry -> model -> trainer -> files): no
import cycle, counting the imports inside functions, which hide cycles from Python until run time."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "vaezoo"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The vaezoo modules that `path` imports anywhere in its code, inside functions too, but not under
    `if TYPE_CHECKING:` (`from vaezoo import x` counts as importing `vaezoo.x` when x is a module)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for block in ast.walk(tree):  # `if TYPE_CHECKING:` imports are for type checkers, never run
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found |= {name for name in names if name in modules}
    return found


def module_name(path: Path) -> str:
    """`vaezoo/trainer/loop.py` -> `vaezoo.trainer.loop` (a package's `__init__` -> the package)."""
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each core module (in every sub-package) -> the core modules it imports."""
    paths = sorted(CORE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) - {module_name(path)} for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (the first repeated at the end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_core_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_covers_the_sub_packages() -> None:
    graph = import_graph()
    assert "vaezoo.trainer.loop" in graph["vaezoo.api"]  # imported inside fit()
    assert {"vaezoo.trainer.graph_step", "vaezoo.trainer.run"} <= graph["vaezoo.trainer.loop"]


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
