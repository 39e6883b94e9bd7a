"""Shared fixtures: the real CIFAR-10 copy, a private cache folder, and running the CLI in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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


@pytest.fixture(scope="session")
def small_run(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real run folder, trained once for the session for the tests that read it (and copy it
    to change it): cifar-vae with tiny widths, one epoch on 64 CIFAR-10 images."""
    from tinydata import TINY_SETS

    import vaezoo

    out = tmp_path_factory.mktemp("small") / "run"
    options = {"train.limit": 64, "train.test_limit": 32, "train.epochs": 1}
    vaezoo.fit("cifar-vae", sets=TINY_SETS, options=options, out=out, data_dir=cifar, device="cpu")
    return out


@pytest.fixture(scope="session")
def small_model(small_run: Path) -> Path:
    """model.safetensors of `small_run`."""
    return small_run / "model.safetensors"


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests share one data cache (decoding CIFAR-10 once), unless VAEZOO_CACHE_DIR is set."""
    if "VAEZOO_CACHE_DIR" not in os.environ:
        os.environ["VAEZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("vaezoo-cache"))


def run_cli(
    *args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`vaezoo ARGS` in a fresh Python process (`python -m vaezoo`, `env` added, or removed where None);
    returns the completed process (never raises on exit code). For the many commands whose output and
    exit code are what is checked, `run_cli_batch` runs them in one process."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "vaezoo", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )


# Runs `vaezoo ARGS` for each job of a JSON list, one after the other in this one process: in the job's
# folder with its environment variables added, the registry reloaded (plugins load again, and warn
# again); the job's file descriptors 1 and 2 go to files of its own, and its exit code to a third.
BATCH = """
import json, os, sys
from vaezoo.cli import main
from vaezoo.plugins.manager import reset_registry

home, environ = os.getcwd(), dict(os.environ)
for job in json.load(open(sys.argv[1])):
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(job["stdout"], "wb") as out, open(job["stderr"], "wb") as err:
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        for key, value in job["env"].items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        os.chdir(job["cwd"] or home)
        try:
            reset_registry()
            main(job["args"])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            os.environ.clear(), os.environ.update(environ), os.chdir(home)
    with open(job["code"], "w") as out:
        out.write(str(code))
"""


class Command:
    """One command of `run_cli_batch`: `vaezoo ARGS`, with environment variables `env` added (None:
    removed), in `cwd`."""

    def __init__(self, *args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None) -> None:
        self.args, self.env, self.cwd = list(args), dict(env or {}), cwd


def run_cli_batch(
    commands: list[list[str] | Command],
    tmp_path: Path,
    env: dict[str, str | None] | None = None,
    timeout: float = 600,
    prelude: str = "",
    fork: bool = False,
) -> list[subprocess.CompletedProcess]:
    """`vaezoo ARGS` for each of `commands` (lists of ARGS, or `Command`s), one after the other in ONE
    fresh Python process, whose start-up (torch's import above all) costs seconds: for many commands
    whose output and exit code are what is checked. Returns one completed process per command, as
    `run_cli` does (`env`: added, or removed where None, for every command).

    `fork=False`: each command runs in that process (`prelude`: Python source run once, first).
    `fork=True`: each command runs in a child forked from it, for commands that must end as processes
    end (killed by a signal, say: a negative return code) or change the process for good; `prelude`
    runs first in each child (a test's patch: one that kills the process at a file commit, say)."""
    folder = Path(tempfile.mkdtemp(prefix="batch-", dir=tmp_path))
    commands = [c if isinstance(c, Command) else Command(*c) for c in commands]
    jobs = [
        {
            "args": command.args,
            "env": command.env,
            "cwd": str(command.cwd) if command.cwd else None,
            "prelude": prelude if fork else "",
            **{part: str(folder / f"{index}.{part}") for part in ("stdout", "stderr", "code")},
        }
        for index, command in enumerate(commands)
    ]
    script = FORKED if fork else prelude + "\n" + BATCH
    environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return _run_jobs(script, jobs, folder, timeout, environment)


def _run_jobs(
    script: str, jobs: list[dict], folder: Path, timeout: float, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess]:
    """Run `script` (BATCH or FORKED) on `jobs` in one fresh Python process; each job's output and exit
    code, read back from its files, as one completed process."""
    (folder / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder / "jobs.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0 and all(Path(job["code"]).exists() for job in jobs), done.stderr[-3000:]
    return [
        subprocess.CompletedProcess(
            job["args"],
            int(Path(job["code"]).read_text()),
            Path(job["stdout"]).read_text(),
            Path(job["stderr"]).read_text(),
        )
        for job in jobs
    ]


# Runs `vaezoo ARGS` for each job of a JSON list in a child forked from this process, which imported
# vaezoo, torch and the torch._dynamo that the optimizers import (seconds) once for all of them. The child
# adds the job's environment variables, goes to its folder, runs its `prelude` and `vaezoo ARGS`, its file
# descriptors 1 and 2 going to files of its own; its exit status is written as subprocess gives it (-N:
# ended by signal N).
FORKED = """
import json, os, sys
import torch, torch._dynamo
from vaezoo.cli import main

for job in json.load(open(sys.argv[1])):
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            with open(job["stdout"], "wb") as out, open(job["stderr"], "wb") as err:
                os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
            for key, value in job["env"].items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
            if job["cwd"]:
                os.chdir(job["cwd"])
            exec(job["prelude"], {"__name__": "__prelude__"})
            main(job["args"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 70
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(job["code"], "w") as out:
        out.write(str(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)))
"""
