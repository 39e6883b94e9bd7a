"""Hostile and unlucky users (docs/reliability.md): run folders survive every interruption and never mix
two runs, a model file's contents cannot steer vaezoo (paths, sizes, types), and the rest of the list of
issue 11 ends in one line with the right exit code, never an internal error. (Data: test_hostile_data.py.)"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Command, run_cli, run_cli_batch, run_cli_forked
from safetensors.torch import load_file
from tinydata import TINY_ARGS, TINY_SETS, error_lines

import vaezoo
from vaezoo.errors import CheckpointError, VaezooError

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it in the inner loop; .ci/run runs everything

TWO_EPOCHS = [
    "--epochs",
    "2",
    "--limit",
    "96",
    "--set",
    "train.test_limit=32",
    "--device",
    "cpu",
    "--seed",
    "1",
    *TINY_ARGS,
]


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


def one_line(result: subprocess.CompletedProcess, code: int = 2, progress: bool = False) -> str:
    """The one error line a failed command printed (`progress`: a run whose progress bar had started,
    and whose bar is not counted); warnings about other plugins do not count."""
    lines = [
        line
        for line in error_lines(result.stderr)
        if not line.startswith("vaezoo: warning:") and (not progress or line.startswith("vaezoo:"))
    ]
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0]


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
    for point, out, died in zip(KILL_POINTS, outs, run_cli_forked(runs, root, prelude=KILLER)):
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
    from vaezoo.trainer.loop import make_optimizer

    out = tmp_path / "run"
    fit_like_cli(cifar, **{"train.epochs": 1, "out": out})
    fit_like_cli(cifar, **{"train.lr": 0.0123, "resume": out})
    model = vaezoo.load(out / "model.safetensors")
    assert model.recipe["train"]["lr"] == 0.0123
    optimizer = make_optimizer(model, model.recipe["train"])
    load_state(out / "state.safetensors", model, optimizer)
    assert {group["lr"] for group in optimizer.param_groups} == {0.0123}  # what the optimizer stepped with


def test_one_writer_at_a_time(cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".vaezoo.lock").write_text(f"{holder.pid}\n")  # a live process holds the folder
        busy = run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out))
        assert f"in use by another vaezoo run (pid {holder.pid})" in one_line(busy)
        assert {p.name for p in out.iterdir()} == {".vaezoo.lock"}
    finally:
        holder.kill()
        holder.wait()
    stale = run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", str(out))  # its owner is gone
    assert stale.returncode == 0, stale.stderr[-2000:]
    assert epochs_in(out) == [1, 2] and not (out / ".vaezoo.lock").exists()


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
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaezoo",
            "run",
            "cifar-vae",
            *TWO_EPOCHS,
            "--epochs",
            "50",
            "--data-dir",
            str(cifar),
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (out / "metrics.jsonl").exists() and process.poll() is None:  # wait until it trains
        time.sleep(0.1)
    for _ in range(30):
        process.send_signal(signal.SIGINT)
        time.sleep(0.005)
    code, err = process.wait(timeout=120), process.stderr.read()
    lines = [line for line in error_lines(err) if line.startswith("vaezoo:")]
    assert code == 130 and len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    # the first signal stops the loop, which saves its state; the burst may end it a moment later
    assert "stopped by SIGINT" in lines[0] or lines[0] == "vaezoo: interrupted"
    assert (out / "state.safetensors").exists()


# ---- a model file's contents --------------------------------------------------------------------


class Raw(str):
    """A metadata value written as it is, not JSON-encoded (for JSON no encoder would write)."""


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a model file whose decoded `vaezoo.*` metadata went through `change(metadata)`."""
    data = source.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    metadata = {k: json.loads(v) for k, v in header["__metadata__"].items() if k.startswith("vaezoo.")}
    change(metadata)
    header["__metadata__"].update({k: v if isinstance(v, Raw) else json.dumps(v) for k, v in metadata.items()})
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])
    return target


def _set(path: list[str], value):
    def change(metadata):
        node = metadata
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


HOSTILE = {
    "huge latent_dim": _set(["vaezoo.recipe", "latent_dim"], 60000),
    "astronomic latent_dim": _set(["vaezoo.recipe", "latent_dim"], 10**15),
    "huge hidden": _set(["vaezoo.recipe", "encoder", "hidden"], [4, 8, 10**6]),
    "huge image": _set(["vaezoo.data", "shape"], [3, 100000, 100000]),
    "2-D data shape": _set(["vaezoo.data", "shape"], [32, 32]),
    "data shape of strings": _set(["vaezoo.data", "shape"], ["3", "32", "32"]),
    "components of the wrong type": _set(["vaezoo.components"], {"kind": "encoder"}),
    "a component without a name": _set(["vaezoo.components"], [{"kind": "encoder"}]),
    "recipe without a dataset": lambda m: m["vaezoo.recipe"].pop("dataset"),
    "recipe of the wrong type": _set(["vaezoo.recipe"], [1, 2, 3]),
    "metrics of the wrong type": _set(["vaezoo.training", "metrics", "test_loss"], [1, 2]),
    "training of the wrong type": _set(["vaezoo.training"], "yesterday"),
    "classes of the wrong type": _set(["vaezoo.data", "classes"], "cat"),
    "conditional not a boolean": _set(["vaezoo.data", "conditional"], "yes"),
    "nested metrics": _set(["vaezoo.training", "metrics", "deep"], json.loads("[" * 200 + "]" * 200)),
    "deep nesting": _set(["vaezoo.training"], Raw("[" * 100_000 + "]" * 100_000)),
    "format 99": _set(["vaezoo.format_version"], 99),
    "unknown model family": _set(["vaezoo.recipe", "model"], {"name": "no-such-family"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_or_hostile_model_file_is_one_clear_error_before_anything_is_built(
    small_model: Path, tmp_path: Path, case: str
) -> None:
    from vaezoo.errors import CheckpointError

    bad = rewrite(small_model, tmp_path / "bad.safetensors", HOSTILE[case])
    with pytest.raises(CheckpointError) as refused:
        vaezoo.load(bad)
    assert str(bad) in str(refused.value) and "\n" not in str(refused.value)


def test_the_cli_refuses_them_in_one_line_exit_2(small_model: Path, tmp_path: Path) -> None:
    commands = []
    for case in ("huge latent_dim", "deep nesting"):
        bad = rewrite(small_model, tmp_path / f"{case}.safetensors", HOSTILE[case])
        commands += [
            ["sample", str(bad), "--out", str(tmp_path / "s.png")],
            ["eval", str(bad), "--limit", "8", "--json"],
        ]
    for command, result in zip(commands, run_cli_batch(commands, tmp_path)):  # one fresh process
        assert command[1] in one_line(result), command
    assert not (tmp_path / "s.png").exists()


def test_a_file_with_a_huge_latent_size_is_refused_without_taking_its_memory(small_model: Path, tmp_path: Path) -> None:
    """The 1.8 MB model of issue 11 claiming latent_dim = 60000 took gigabytes before a shape check."""
    bad = rewrite(small_model, tmp_path / "bad.safetensors", HOSTILE["huge latent_dim"])
    peak = "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    probe = f"import resource, vaezoo\ntry:\n    vaezoo.load({str(bad)!r})\nexcept vaezoo.VaezooError as e:\n"
    probe += f"    print(e)\n{peak}"
    good = f"import resource, vaezoo\nvaezoo.load({str(small_model)!r})\n{peak}"
    refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    normal = subprocess.run([sys.executable, "-c", good], capture_output=True, text=True, timeout=120)
    message, peak = refused.stdout.strip().splitlines()
    assert "decoder.fc.weight" in message or "shape" in message
    assert int(peak) < int(normal.stdout.strip()) + 100_000  # KiB: within 100 MB of loading the real model


def test_non_finite_weights_are_refused(small_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from vaezoo.files.model_header import read_header

    data = small_model.read_bytes()
    metadata = read_header(data, small_model)["__metadata__"]
    tensors = load_file(small_model)
    tensors["decoder.fc.bias"][3] = float("nan")
    save_file(tensors, tmp_path / "nan.safetensors", metadata=metadata)
    result = run_cli("sample", str(tmp_path / "nan.safetensors"), "--out", str(tmp_path / "s.png"))
    assert "decoder.fc.bias holds NaN" in one_line(result)


def test_a_model_file_never_chooses_the_folder_vaezoo_reads(small_model: Path, cifar: Path, tmp_path: Path) -> None:
    """Metadata naming an image-folder dataset at / must not make eval walk the filesystem: the data
    come from --data-dir."""
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 128)).save(folder / f"{i}.png")
    bad = rewrite(
        small_model,
        tmp_path / "bad.safetensors",
        _set(
            ["vaezoo.recipe", "dataset"],
            {"name": "image-folder", "path": "/", "size": 32, "grayscale": False, "test_fraction": 0.5},
        ),
    )
    result = run_cli("eval", str(bad), "--data-dir", str(folder), "--json", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["images"] == 4  # half of the 8 pictures under --data-dir, nothing from /


def test_damaged_states_are_one_line_and_never_train(cifar: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from vaezoo.files.model_header import read_header

    out = tmp_path / "run"
    fit_like_cli(cifar, **{"train.epochs": 1, "out": out})
    state = out / "state.safetensors"
    good = state.read_bytes()
    metadata = read_header(good, state)["__metadata__"]
    tensors = load_file(state)
    counters = json.loads(metadata["vaezoo.counters"])
    cases = {
        "negative seconds": {**metadata, "vaezoo.counters": json.dumps({**counters, "seconds": -5.0})},
        "epoch of the wrong type": {**metadata, "vaezoo.counters": json.dumps({**counters, "epoch": "one"})},
        "counters not an object": {**metadata, "vaezoo.counters": "[1, 2]"},
        "optimizer garbage": {**metadata, "vaezoo.optimizer": json.dumps({"param_groups": "x", "plain": {}})},
        "rng garbage": {**metadata, "vaezoo.rng": json.dumps({"numpy": [1], "python": []})},
        "history garbage": {**metadata, "vaezoo.history": json.dumps([{"epoch": "x"}])},
        "not JSON": {**metadata, "vaezoo.counters": "{{{"},
    }
    for name, changed in cases.items():
        save_file(tensors, state, metadata=changed)
        with pytest.raises(CheckpointError, match="damaged"):
            fit_like_cli(cifar, resume=out)
        assert epochs_in(out) == [1], name
    broken = dict(tensors)
    broken["rng.torch"] = torch.zeros(3, dtype=torch.uint8)
    save_file(broken, state, metadata=metadata)
    assert "rng.torch" in one_line(
        run_cli("run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--resume", str(out))
    )


# ---- everything else ----------------------------------------------------------------------------


BAD_VALUES = [
    (["--set", "encoder.hidden=[0,64,128]"], "hidden widths from 1"),
    (["--set", "train.weight_decay=-1"], "weight_decay must not be negative"),
    (["--seed", "123456789012345678901"], "seed"),
    (["--set", "train.skip_grad_norm=-2"], "skip_grad_norm must not be negative"),
    (["--set", "model.iw_samples=0"], "iw_samples >= 1"),
    (["--set", "model.name=no-such-family"], "unknown model 'no-such-family'"),
]


@pytest.fixture(scope="module")
def bad_value_runs(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """(run folder, `vaezoo run` result) for each of BAD_VALUES, the runs in one fresh process."""
    root = tmp_path_factory.mktemp("bad-values")
    base = ["run", "cifar-vae", "--epochs", "1", "--limit", "16", "--device", "cpu", "--data-dir", str(cifar)]
    outs = [root / str(index) / "run" for index in range(len(BAD_VALUES))]
    commands = [[*base, "--out", str(out), *args] for out, (args, _) in zip(outs, BAD_VALUES)]
    return list(zip(outs, run_cli_batch(commands, root)))


@pytest.mark.parametrize("index", range(len(BAD_VALUES)), ids=[expected for _, expected in BAD_VALUES])
def test_bad_values_are_one_line_exit_2(bad_value_runs: list, index: int) -> None:
    args, expected = BAD_VALUES[index]
    out, result = bad_value_runs[index]
    assert result.args[-len(args) :] == args
    assert expected in one_line(result)
    assert not (out / "recipe.toml").exists()


def test_out_that_cannot_be_a_run_folder(cifar: Path, tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    into = [
        ["run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar), "--out", out]
        for out in (str(afile), "/proc/vaezoo-run")
    ]
    into_file, into_proc = run_cli_batch(into, tmp_path)  # one fresh process
    assert "is a file" in one_line(into_file)
    assert afile.read_text() == "not a folder"
    assert "cannot" in one_line(into_proc)


def test_eval_and_sample_bounds(small_model: Path, tmp_path: Path) -> None:
    one_line(run_cli("eval", str(small_model), "--limit", "-5"))
    assert "10000" in one_line(run_cli("sample", str(small_model), "-n", "100000", "--out", str(tmp_path / "s.png")))


def test_eval_json_never_prints_nan(capsys) -> None:
    from vaezoo.cli import _print_json

    _print_json({"loss": float("nan"), "terms": {"x": float("inf")}, "ok": 1.5})
    assert json.loads(capsys.readouterr().out) == {"loss": None, "terms": {"x": None}, "ok": 1.5}


EVIL_PLUGIN = {
    "evil_plugin.py": "import sys\nsys.exit(3)\n",
    "ghost_plugin.py": (
        "import vaezoo\n\n@vaezoo.hookimpl\ndef register_encoders(register):\n    register('ghost', "
        "'nowhere_at_all:Thing', summary='missing')\n"
        "\n@vaezoo.hookimpl\ndef register_decoders(register):\n    register('wrong', "
        "'ghost_plugin:WrongDecoder', summary='wrong shapes')\n\n"
        "import torch\n\nclass WrongDecoder(torch.nn.Module):\n    def __init__(self, *, out_shape, "
        "latent_dim):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(latent_dim, 7)\n\n    def forward(self, z):\n        return self.fc(z)\n"
    ),
}


@pytest.fixture(scope="module")
def evil_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A folder on PYTHONPATH with two plugins found through entry points: one calls sys.exit on
    import, one registers a missing module and a decoder of the wrong shape."""
    root = tmp_path_factory.mktemp("evil")
    for name, code in EVIL_PLUGIN.items():
        (root / name).write_text(code)
    info = root / "evil_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\nevil = evil_plugin\nghost = ghost_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_that_exits_on_import_is_isolated(evil_path: dict[str, str]) -> None:
    result = run_cli("list", "recipes", "--json", env=evil_path)
    assert result.returncode == 0 and "cifar-vae" in result.stdout, result.stderr
    assert "plugin 'evil' (evil-plugins) failed to load: SystemExit: 3" in result.stderr


def test_a_component_registered_as_a_missing_module_is_one_line(
    cifar: Path, tmp_path: Path, evil_path: dict[str, str]
) -> None:
    result = run_cli(
        "run",
        "cifar-vae",
        *TWO_EPOCHS,
        "--set",
        "encoder.name=ghost",
        "--data-dir",
        str(cifar),
        "--out",
        str(tmp_path / "r"),
        env=evil_path,
    )
    assert (
        "plugin 'ghost' (evil-plugins) registers encoder 'ghost' as 'nowhere_at_all:Thing', which does not import"
        in one_line(result)
    )


def test_a_plugin_with_wrong_shapes_is_named(cifar: Path, tmp_path: Path, evil_path: dict[str, str]) -> None:
    result = run_cli(
        "run",
        "cifar-vae",
        *TWO_EPOCHS,
        "--set",
        'decoder={name="wrong"}',
        "--data-dir",
        str(cifar),
        "--out",
        str(tmp_path / "r"),
        env=evil_path,
    )
    line = one_line(result, code=1, progress=True)
    assert "decoder 'wrong'" in line and "failed in a training step" in line


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
