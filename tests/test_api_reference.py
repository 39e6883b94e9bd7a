"""docs/api.md, the Python API reference, is what docs/make_api.py writes from the code (it cannot drift),
it is the same on any machine, and every public name it shows has a docstring of its own."""

from __future__ import annotations

import difflib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import vaezoo

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"
MODEL_DECLARATIONS = (
    "discrete",
    "conditional",
    "objective",
    "regularizer",
    "applies_kl_weight",
    "unused_parameters",
    "cuda_graph",
    "model_files",
)


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = sys.modules["make_api"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    return module


make_api = _load_generator()


def test_api_md_is_what_the_code_says():
    written = PAGE.read_bytes().decode("utf-8") if PAGE.is_file() else ""  # byte for byte: no newline translation
    generated = make_api.render()
    diff = "".join(
        list(difflib.unified_diff(written.splitlines(True), generated.splitlines(True), "docs/api.md", "the code"))[:40]
    )
    assert generated.encode("utf-8") == written.encode("utf-8"), (
        f"docs/api.md is out of date: run `python docs/make_api.py` and commit it\n{diff}"
    )


def test_every_public_name_has_a_docstring():
    undocumented = [name for name in vaezoo.__all__ if not make_api.describe(f"vaezoo.{name}", getattr(vaezoo, name))]
    assert not undocumented, f"vaezoo.{undocumented[0]} has no docstring: write a short, accurate one"


def test_every_method_and_name_on_the_page_has_a_docstring():
    missing = make_api.missing_docs()
    assert not missing, f"{', '.join(missing)}: no docstring of their own (docs/api.md would show nothing)"


def test_the_page_shows_every_public_name_hook_error_and_model_declaration():
    from vaezoo import errors, testing
    from vaezoo.plugins.hookspecs import HOOKS

    page = PAGE.read_text(encoding="utf-8")
    headings = {line[4:].strip("`") for line in page.splitlines() if line.startswith("### ")}
    assert {f"vaezoo.{name}" for name in vaezoo.__all__} <= headings
    assert {f"vaezoo.testing.{name}" for name in testing.__all__} <= headings
    assert set(HOOKS.values()) <= headings
    assert {f"vaezoo.errors.{name}" for name, c in vars(errors).items() if isinstance(c, type)} <= headings
    assert "Exit code 130." in page and "Exit code 1." in page
    for name in MODEL_DECLARATIONS:
        line = next((line for line in page.splitlines() if line.startswith(f"- `{name}: ")), "")
        assert line.partition("`: ")[2], f"docs/api.md does not describe Model.{name}"


def test_the_page_is_the_same_on_any_machine(tmp_path):
    """Another hash seed and working folder give the same text; no path or memory address gets in, and no
    optional extra is imported."""
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('m', sys.argv[1]); "
        "m = sys.modules['m'] = u.module_from_spec(s); s.loader.exec_module(m); sys.stdout.write(m.render()); "
        "print('\\0', *sorted({'matplotlib', 'tensorboard', 'huggingface_hub', 'torch_fidelity'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    command = [sys.executable, "-c", code, str(ROOT / "docs" / "make_api.py")]
    other = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, check=True)
    page = PAGE.read_text(encoding="utf-8")
    text, _, extras = other.stdout.decode("utf-8").partition("\0")
    assert text == make_api.render() == page
    assert not extras.strip(), f"writing the page imported the optional extras {extras.strip()}"
    assert str(ROOT) not in page and str(Path.home()) not in page and " at 0x" not in page


def test_readme_and_plugins_md_link_the_reference():
    assert "(docs/api.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(api.md)" in (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
