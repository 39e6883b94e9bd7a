"""`vaezoo --help`, `list`, `plugins`, and `inspect` and `card` of a model file answer without importing torch (nor
pydantic, which typer 0.29 imports for every command line: pyproject keeps typer below it): checked in fresh processes,
not timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
from vaezoo.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = sorted(name for name in ("torch", "pydantic", "numpy") if name in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["list", "recipes", "--json"], ["plugins"]])
def test_cheap_commands_do_not_import_torch(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy = done.stdout.strip().splitlines()[-1]
    assert heavy == "HEAVY=", f"`vaezoo {' '.join(argv)}` imported {heavy[6:]}"


def test_building_the_list_does_not_import_torch() -> None:
    code = (
        "import sys, vaezoo.cli\nfrom vaezoo.plugins.manager import list_components\nassert "
        "list_components()\nprint('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


MODEL = Path(__file__).parent / "fixtures" / "vaezoo-0.1-cifar-vae-tiny.safetensors"


@pytest.mark.parametrize("command", ["inspect", "card"])
def test_reading_a_model_file_does_not_import_torch(command: str) -> None:
    """inspect, card (and push) read the header's JSON only (vaezoo.files.model_header)."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(argv=[command, str(MODEL)])], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    heavy = done.stdout.strip().splitlines()[-1]
    assert heavy == "HEAVY=" and "cifar-vae" in done.stdout, done.stdout[-2000:]
