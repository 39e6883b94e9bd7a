"""The core's modules stand on floors (README, Architecture): each imports only from its own floor or those
below, and no two import each other in a circle. Every import counts: at module level, inside functions
(which hide a circle from Python until run time) and under `if TYPE_CHECKING:` (a type-only import still
ties two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "vaezoo"

# From the ground up: a module's floor is that of the longest prefix of its name listed here. The package
# itself (`vaezoo/__init__.py`) imports nothing: its names load their modules on first use.
FLOORS: list[tuple[str, ...]] = [
    ("vaezoo", "vaezoo.errors"),  # one error hierarchy; the package's version
    ("vaezoo.plugins",),  # the plugin machinery: kinds, hookspecs, manager, registry, the plugin-API version
    ("vaezoo.components",),  # the interfaces plugins implement
    ("vaezoo.recipes",),  # registry.toml + --set -> a validated recipe; recipe -> model
    ("vaezoo.files",),  # storage only: bytes, headers, tensors, train state, run folders, PNG bytes
    ("vaezoo.data",),  # datasets -> uint8 cache -> batches
    ("vaezoo.trainer",),  # the loop, its run and step, evaluation, pictures and samples, devices
    ("vaezoo.sharing",),  # Hub names, downloads (models, FID weights), push, model cards
    ("vaezoo.api", "vaezoo.loading", "vaezoo.samplers", "vaezoo.testing"),  # put the floors together
    ("vaezoo.cli", "vaezoo.__main__"),  # the command line
]


def module_name(path: Path) -> str:
    """`vaezoo/trainer/loop.py` -> `vaezoo.trainer.loop` (a package's `__init__` -> the package)."""
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(node: ast.AST, here: str, is_package: bool) -> list[str]:
    """The dotted names an import statement names (`from a import b` names `a` and `a.b`; a relative
    import is resolved against the module `here`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = here.split(".") if is_package else here.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return []


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The vaezoo modules that `path` imports anywhere in its code: at module level, inside functions and
    under `if TYPE_CHECKING:` alike (`from vaezoo import x` imports `vaezoo.x` when x is a module, and
    the package `vaezoo`)."""
    here, is_package = module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = [name for node in ast.walk(tree) for name in imported_names(node, here, is_package)]
    return {name for name in names if name in modules} - {here}


def import_graph() -> dict[str, set[str]]:
    """Each core module (in every sub-package) -> the core modules it imports."""
    paths = sorted(CORE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def floor_of(module: str) -> int:
    """The floor of a module: that of the longest listed prefix of its name (-1: on none)."""
    best, floor = "", -1
    for index, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, floor = name, index
    return floor


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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a floor above its own, as `importer (floor) -> imported (floor)`."""
    return [
        f"{module} ({FLOORS[floor_of(module)][0]}) -> {target} ({FLOORS[floor_of(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if floor_of(target) > floor_of(module)
    ]


def test_the_core_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_each_module_imports_only_from_its_floor_or_below() -> None:
    graph = import_graph()
    assert [module for module in graph if floor_of(module) < 0] == [], "modules on no floor: add them to FLOORS"
    assert upward_imports(graph) == []


def test_files_is_storage_only() -> None:
    """files/ knows no device, no Hub, no trainer, no dataset, and builds no model."""
    graph = import_graph()
    above = ("vaezoo.trainer", "vaezoo.sharing", "vaezoo.data", "vaezoo.recipes.build", "vaezoo.api")
    reached = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith("vaezoo.files")
        for target in targets
        if target.startswith(above)
    }
    assert reached == set()


def test_the_graph_counts_every_kind_of_import() -> None:
    graph = import_graph()
    assert "vaezoo.trainer.loop" in graph["vaezoo.api"]  # imported inside fit()
    assert "vaezoo.plugins.registry" in graph["vaezoo.components"]  # under `if TYPE_CHECKING:`
    assert {"vaezoo.trainer.step", "vaezoo.trainer.run"} <= graph["vaezoo.trainer.loop"]
    assert "vaezoo" in graph["vaezoo.files.model_file"]  # `import vaezoo` for its version


def test_the_checks_find_a_cycle_and_an_upward_import() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert upward_imports({"vaezoo.files.x": {"vaezoo.trainer.devices"}}) == [
        "vaezoo.files.x (vaezoo.files) -> vaezoo.trainer.devices (vaezoo.trainer)"
    ]
    assert floor_of("vaezoo.plugins.manager") < floor_of("vaezoo.components") < floor_of("vaezoo.recipes.build")
    tree = ast.parse("from . import hub\nfrom ..files import png")
    names = [name for node in tree.body for name in imported_names(node, "vaezoo.sharing.card", False)]
    assert names == ["vaezoo.sharing", "vaezoo.sharing.hub", "vaezoo.files", "vaezoo.files.png"]
