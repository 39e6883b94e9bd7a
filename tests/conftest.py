"""Shared fixtures: the real CIFAR-10 copy, a private cache folder, and running the CLI in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = REPO.parent / "shared" / "data" / "cifar10-images"


def cifar_dir() -> Path | None:
    path = Path(os.environ.get("VAEZOO_TEST_CIFAR", os.environ.get("VAEZOO_DATA_DIR", DEFAULT_CIFAR)))
    return path if (path / "train").is_dir() else None


@pytest.fixture(scope="session")
def cifar() -> Path:
    """The real CIFAR-10 copy (class folders). CI sets VAEZOO_REQUIRE_DATA=1 so that it is never skipped."""
    path = cifar_dir()
    if path is None:
        if os.environ.get("VAEZOO_REQUIRE_DATA") == "1":
            pytest.fail("VAEZOO_REQUIRE_DATA=1 but the CIFAR-10 copy is missing: set VAEZOO_DATA_DIR")
        pytest.skip("CIFAR-10 copy not found: set VAEZOO_DATA_DIR to ../shared/data/cifar10-images")
    return path


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests share one data cache (decoding CIFAR-10 once), unless VAEZOO_CACHE_DIR is set."""
    if "VAEZOO_CACHE_DIR" not in os.environ:
        os.environ["VAEZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("vaezoo-cache"))


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`vaezoo ARGS` in a fresh Python process; returns the completed process (never raises on exit code)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vaezoo", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )
