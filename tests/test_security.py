"""Nothing from a user's file is ever unpickled: no pickle-like imports, no torch.load without
weights_only=True in vaezoo/, plugins/ or examples/; a pickle posing as a model is refused unread."""

from __future__ import annotations

import ast
import pickle  # only to WRITE a hostile fixture
from pathlib import Path

import pytest
import torch
from conftest import REPO

import vaezoo
from vaezoo.errors import CheckpointError

PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def source_files() -> list[Path]:
    files = [p for folder in ("vaezoo", "plugins", "examples") for p in (REPO / folder).rglob("*.py")]
    return [p for p in files if ".venv" not in p.parts and "build" not in p.parts]


def problems(path: Path) -> list[str]:
    """Pickle imports and unsafe torch.load calls in one source file."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    torch_load_names = {"torch.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLERS:
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in PICKLERS:
                found.append(f"line {node.lineno}: from {node.module} import ...")
            if node.module == "torch":
                torch_load_names |= {alias.asname or alias.name for alias in node.names if alias.name == "load"}
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in torch_load_names or name.endswith("torch.load"):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    found.append(f"line {node.lineno}: {ast.unparse(node)} without weights_only=True")
            if name in ("__import__", "importlib.import_module", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in PICKLERS:
                    found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_pickle_and_no_unsafe_torch_load_in_vaezoo_plugins_and_examples():
    files = source_files()
    assert any(p.parent.name == "vaezoo" for p in files) and any("plugins" in p.parts for p in files)
    found = {str(p.relative_to(REPO)): problems(p) for p in files}
    assert not {k: v for k, v in found.items() if v}


def test_the_checker_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport dill as d\nfrom cloudpickle import loads\nimport torch\nfrom torch import load\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nload('y')\n__import__('pickle')\n"
        "torch.load('ok', weights_only=True)\n"
    )
    assert len(problems(bad)) == 7


class Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_renamed_to_safetensors_is_never_unpickled(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.safetensors"
    if how == "pickle":
        path.write_bytes(pickle.dumps(Hostile(marker)))
    else:
        torch.save({"state": Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        vaezoo.load(path)
    assert not marker.exists()
