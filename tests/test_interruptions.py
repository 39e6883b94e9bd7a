"""Runs that are interrupted or raced (docs/reliability.md): a run killed at any file commit, stopped
by a full disk or a signal (SIGTERM, SIGINT bursts, under torchrun too), or refused on resume ends as
the run that was never interrupted; two writers never share a run folder; each stop is one line and
exit 130 (or 2 for what a user got wrong), never an internal error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Command, run_cli, run_cli_batch
from safetensors.torch import load_file
from tinydata import TINY_SETS, TWO_EPOCHS, error_lines, one_line, training_process

import vaezoo
from vaezoo.errors import VaezooError

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it in the inner loop; .ci/run runs everything


def fit_like_cli(cifar: Path, sets: tuple[str, ...] = (), **options):
    """vaezoo.fit in this process with the settings of TWO_EPOCHS (`options`: dotted keys)."""
    base = {"train.epochs": 2, "train.limit": 96, "train.seed": 1}
    resume, out = options.pop("resume", None), options.pop("out", None)
    return vaezoo.fit(
        "cifar-vae",
        sets=["train.test_limit=32", *TINY_SETS, *sets],
        options={**base, **options},
        data_dir=cifar,
        device="cpu",
        resume=resume,
        out=out,
    )


# Kills its own process with SIGKILL just before or just after the Nth file commit (os.replace) of
# the run: every write of vaezoo is a temporary file renamed into place, so these are its crash points.
KILLER = """
import os, signal
n, when = int(os.environ["KILL_AT"]), os.environ["KILL_WHEN"]
replace, count = os.replace, [0]
def dying_replace(src, dst, *args, **kwargs):
    count[0] += 1
    if count[0] == n and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst, *args, **kwargs)
    if count[0] == n and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = dying_replace
"""


def epochs_in(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-epoch tiny run, never interrupted: what every interrupted run must end as."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def assert_same_run(out: Path, straight: Path) -> None:
    assert epochs_in(out) == [1, 2]
    ours, theirs = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [json.loads(x)["train_loss"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        json.loads(x)["train_loss"] for x in (straight / "metrics.jsonl").read_text().splitlines()
    ]


# recipe.toml is commit 1; epoch 1 commits state (2), model (3), metrics (4), pictures (5-8); epoch 2 from 9 on
KILL_POINTS = [(1, "after"), (2, "before"), (2, "after"), (4, "after"), (9, "after")]


@pytest.fixture(scope="module")
def killed_and_continued(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, tuple]:
    """(kill_at, when) -> (run folder, the killed run, [the commands that finished the run]): each run
    killed in a process of its own (forked from one that imported vaezoo and torch once); then, in one
    fresh process, each folder resumed, or (killed before the first commit of a state) a resume refused
    and a new run into the folder (its lock is stale)."""
    root = tmp_path_factory.mktemp("killed")
    outs = [root / str(index) / "run" for index in range(len(KILL_POINTS))]
    runs = [
        Command(
            *("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out)),
            env={"KILL_AT": str(kill_at), "KILL_WHEN": when},
        )
        for out, (kill_at, when) in zip(outs, KILL_POINTS)
    ]
    killed, commands = {}, []
    for point, out, died in zip(KILL_POINTS, outs, run_cli_batch(runs, root, prelude=KILLER, fork=True)):
        killed[point] = out, died
        resume = ["run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--resume", str(out)]
        new = ["run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out)]
        commands.append([resume] if (out / "state.safetensors").exists() else [resume, new])
    results = iter(run_cli_batch([c for steps in commands for c in steps], root))
    return {
        point: (out, died, [next(results) for _ in steps])
        for (point, (out, died)), steps in zip(killed.items(), commands)
    }


@pytest.mark.parametrize(("kill_at", "when"), KILL_POINTS)
def test_sigkill_at_every_commit_point_resumes_to_the_same_run(
    killed_and_continued: dict, straight: Path, kill_at: int, when: str
) -> None:
    out, killed, (*refused, again) = killed_and_continued[kill_at, when]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if refused:  # killed before the first commit of a state: nothing to resume, a new run
        (resumed,) = refused
        assert "--resume" in resumed.args and "--out" in again.args
        assert "no state.safetensors" in one_line(resumed) or "no recipe.toml" in resumed.stderr
    else:
        assert "--resume" in again.args
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(out, straight)
    assert not (out / ".vaezoo.lock").exists()


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_once_there_is_room(
    cifar: Path, straight: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = disk / "run"
        full = run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out))
        line = one_line(full, progress=True)
        assert "No space left on device" in line and str(out) in line
        assert subprocess.run(["mount", "-o", "remount,size=20m", str(disk)]).returncode == 0
        resume = ["--resume", str(out)] if (out / "state.safetensors").exists() else ["--out", str(out)]
        again = run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), *resume)
        assert again.returncode == 0, again.stderr[-2000:]
        assert_same_run(out, straight)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_refused_resume_changes_nothing_and_the_run_still_resumes(
    cifar: Path, straight: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    fit_like_cli(cifar, **{"train.epochs": 1, "out": out})
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    refused = [
        ({"sets": ("encoder.hidden=[16,32,64]",)}, "cannot change encoder"),
        ({"train.epochs": 1}, "already trained to epoch 1"),
        ({"train.batch_size": 8}, "cannot change train.batch_size"),
        ({"train.seed": 5}, "cannot change train.seed"),
    ]
    for change, message in refused:
        change = dict(change)
        with pytest.raises(VaezooError, match=message):
            fit_like_cli(cifar, change.pop("sets", ()), resume=out, **change)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, change
    resume = ["run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--resume", str(out)]
    refused, again = run_cli_batch([[*resume, "--epochs", "1"], resume], tmp_path)  # one fresh process
    one_line(refused)  # and through the CLI
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(out, straight)


def test_a_damaged_metrics_file_does_not_stop_a_resume(cifar: Path, straight: Path, tmp_path: Path) -> None:
    """metrics.jsonl is an output, rewritten from the state's history: bytes that are not UTF-8 in it
    change nothing."""
    out = tmp_path / "run"
    fit_like_cli(cifar, **{"train.epochs": 1, "out": out})
    (out / "metrics.jsonl").write_bytes(b"\xff\xfe not a metrics line\n")
    fit_like_cli(cifar, resume=out)
    assert_same_run(out, straight)


def test_resume_never_writes_into_another_runs_folder(cifar: Path, straight: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        fit_like_cli(cifar, **{"train.epochs": 1, "out": folder})
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    refused = run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--resume", str(a), "--out", str(b))
    assert "already holds a run" in one_line(refused)
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before
    c = tmp_path / "c"  # an empty folder takes the continued run, with the history so far
    fit_like_cli(cifar, resume=a, out=c)
    assert epochs_in(c) == [1, 2] and epochs_in(a) == [1]


def test_resume_with_a_new_learning_rate_trains_at_it(cifar: Path, tmp_path: Path) -> None:
    from vaezoo.files.train_state import load_state
    from vaezoo.trainer.settings import TrainSettings
    from vaezoo.trainer.step import make_optimizer

    out = tmp_path / "run"
    fit_like_cli(cifar, **{"train.epochs": 1, "out": out})
    fit_like_cli(cifar, **{"train.lr": 0.0123, "resume": out})
    model = vaezoo.load(out / "model.safetensors")
    assert model.recipe["train"]["lr"] == 0.0123
    optimizer = make_optimizer(model, TrainSettings.of(model.recipe))
    load_state(out / "state.safetensors", model, optimizer)
    assert {group["lr"] for group in optimizer.param_groups} == {0.0123}  # what the optimizer stepped with


def test_two_runs_started_together_into_one_folder_do_not_mix(cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vaezoo",
        "run",
        "cifar-vae",
        *TWO_EPOCHS,
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
    ]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another vaezoo run" in loser or "already holds a run" in loser
    assert epochs_in(out) == [1, 2]


@pytest.mark.parametrize("delay", [0.2, 2.5])
def test_sigterm_at_any_moment_is_one_line_and_exit_130(cifar: Path, tmp_path: Path, delay: float) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "vaezoo", "run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    code, err = process.wait(timeout=120), process.stderr.read()
    if code == 0:
        pytest.skip("the run finished before the signal")
    lines = [line for line in error_lines(err) if line.startswith("vaezoo:")]
    assert code == 130 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert not (out / ".vaezoo.lock").exists()


# A module run with `python -m` whose `vaezoo run` is stopped by a SIGTERM that lands inside a string exec,
# where it landed in about 1 of 15 start-ups: torch's imports make hundreds of dataclass methods that way.
SIGNAL_IN_EXEC = """
import vaezoo.api
from vaezoo.cli import main


def fit(*args, **kwargs):
    exec("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", {})

vaezoo.api.fit = fit
main(["run", "cifar-vae"])
"""


def test_a_signal_inside_a_string_exec_still_exits_130(tmp_path: Path) -> None:
    (tmp_path / "signal_in_exec").mkdir()
    (tmp_path / "signal_in_exec" / "__main__.py").write_text(SIGNAL_IN_EXEC)
    result = subprocess.run(
        [sys.executable, "-m", "signal_in_exec"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 130, result.stderr[-2000:]  # not -2: CPython's "unhandled" mark is cleared
    assert error_lines(result.stderr) == ["vaezoo: interrupted"]


# A SIGTERM whose KeyboardInterrupt Python wraps in another error: inside a descriptor's `__set_name__`
# it becomes a RuntimeError, as it did once in CI while torch's imports made a class.
SIGNAL_IN_SET_NAME = """
import os, signal
import vaezoo.api
from vaezoo.cli import main


class Stop:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10000):  # the handler runs between bytecodes, still inside __set_name__
            pass


def fit(*args, **kwargs):
    class Holder:
        stop = Stop()

vaezoo.api.fit = fit
main(["run", "cifar-vae"])
"""


def test_a_signal_wrapped_in_another_error_still_exits_130(tmp_path: Path) -> None:
    script = tmp_path / "signal_in_set_name.py"
    script.write_text(SIGNAL_IN_SET_NAME)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr[-2000:]
    assert error_lines(result.stderr) == ["vaezoo: interrupted"]


def test_output_to_a_closed_pipe_blames_no_plugin(small_model: Path) -> None:
    """`vaezoo inspect MODEL | head -1`: the reader went away; click exits 1, and vaezoo says nothing more
    (it said a plugin had called sys.exit)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vaezoo", "inspect", str(small_model)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1 and error_lines(result.stderr) == [], result.stderr[-2000:]


def test_a_burst_of_ctrl_c_is_one_line(cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = training_process(cifar, out)
    for _ in range(30):
        process.send_signal(signal.SIGINT)
        time.sleep(0.005)
    code, err = process.wait(timeout=120), process.stderr.read()
    lines = [line for line in error_lines(err) if line.startswith("vaezoo:")]
    assert code == 130 and len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    # the first signal stops the loop, which saves its state; the burst may end it a moment later
    assert "stopped by SIGINT" in lines[0] or lines[0] == "vaezoo: interrupted"
    assert (out / "state.safetensors").exists()


def test_sigterm_to_run_nproc_stops_torchrun_and_its_workers(cifar: Path, tmp_path: Path) -> None:
    """`run --nproc 2` forwards the signal to torchrun, whose workers save their state and exit:
    nothing keeps training after the parent has gone."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vaezoo",
        "run",
        "cifar-vae",
        *TWO_EPOCHS,
        "--epochs",
        "200",
        "--nproc",
        "2",
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
    ]
    parent = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not (out / "metrics.jsonl").exists() and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert parent.poll() is None, parent.stderr.read()[-2000:]
    parent.send_signal(signal.SIGTERM)
    code, err = parent.wait(timeout=180), parent.stderr.read()
    assert code == 130, err[-2000:]
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes still running for {out}: {left}"
    assert (out / "state.safetensors").exists()
