"""Run folders and data folders against a hostile tester: locks whose pid was recycled or
that several runs take over at once, temporary files a SIGKILL leaves behind, refused runs that leave
no folder, a damaged recipe.toml on resume, data folders that are not folders, and eval on data unlike
those a model was trained on. Each case is one line and an exit code (docs/reliability.md)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Command, run_cli, run_cli_batch
from tinydata import TINY_ARGS, TINY_SETS, error_lines, one_line, rewrite, tiny_cifar  # noqa: F401  (fixture)

import vaezoo
from vaezoo.errors import VaezooError
from vaezoo.files.run_folder import LOCK_NAME, RunLock, boot_id, process_identity, process_start

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it in the inner loop; .ci/run runs everything

QUICK = ["--epochs", "1", "--limit", "48", "--set", "train.test_limit=16", "--device", "cpu", "--seed", "1", *TINY_ARGS]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def sleeper():
    """A live process that is not a vaezoo run."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def plant_lock(folder: Path, record: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(record) + "\n")
    return folder / LOCK_NAME


# ---- locks ----------------------------------------------------------------------------------------


def test_the_lock_records_pid_start_time_and_boot_and_goes_when_the_run_ends(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run") as lock:
        record = json.loads(lock.path.read_text())
        assert record == {"pid": os.getpid(), "start": process_start(os.getpid()), "boot": boot_id()}
        assert record["start"] == int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert not lock.path.exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    identity = process_identity(sleeper.pid)
    recycled = plant_lock(
        tmp_path / "recycled", {**identity, "start": identity["start"] - 1}
    )  # same pid, another process
    with RunLock(recycled.parent):
        assert json.loads(recycled.read_text())["pid"] == os.getpid()
    rebooted = plant_lock(tmp_path / "rebooted", {**identity, "boot": "another-boot"})  # written before a reboot
    with RunLock(rebooted.parent):
        assert json.loads(rebooted.read_text())["pid"] == os.getpid()


def test_a_live_lock_is_refused_naming_the_lock_file(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    for name, record in (
        ("identity", process_identity(sleeper.pid)),
        ("pid only", sleeper.pid),
    ):  # pid only: vaezoo 0.2, or no /proc
        lock = plant_lock(tmp_path / name, record)
        with pytest.raises(VaezooError) as refused:
            RunLock(lock.parent).acquire()
        assert f"in use by another vaezoo run (pid {sleeper.pid})" in str(
            refused.value
        ) and f"delete its lock file {lock}" in str(refused.value)
        assert lock.read_text() == json.dumps(record) + "\n"


def test_the_cli_refuses_a_live_lock_in_one_line_and_takes_a_recycled_one_over(
    cifar: Path, tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    out = tmp_path / "run"
    lock = plant_lock(out, process_identity(sleeper.pid))
    busy = run_cli("run", "cifar-vae", *QUICK, "--data-dir", str(cifar), "--out", str(out))
    assert str(lock) in one_line(busy)
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    plant_lock(out, {**process_identity(sleeper.pid), "start": 1})
    again = run_cli("run", "cifar-vae", *QUICK, "--data-dir", str(cifar), "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and not lock.exists()


def _race(folders: list[str], barrier, results) -> None:
    """One taker: for each folder in turn, start with the others and try to take the stale lock. A
    random pause after judging the lock widens the window between judging and removing it (with the
    check-then-unlink of vaezoo 0.2 every round then had several winners)."""
    import random

    import vaezoo.files.run_folder

    judge = vaezoo.files.run_folder.identity_alive

    def slow_judge(owner: dict) -> bool:
        alive = judge(owner)
        time.sleep(random.random() * 0.002)
        return alive

    vaezoo.files.run_folder.identity_alive = slow_judge
    for folder in folders:
        barrier.wait()
        try:
            RunLock(Path(folder)).acquire()  # never released: the winner stays alive until all rounds end
            results.put((folder, os.getpid()))
        except VaezooError as error:
            assert "in use by another vaezoo run" in str(error), str(error)
    barrier.wait()


@pytest.mark.parametrize("stale", ["dead pid", "recycled pid"])
def test_takers_racing_for_a_stale_lock_have_exactly_one_winner(
    tmp_path: Path, sleeper: subprocess.Popen, stale: str
) -> None:
    rounds, takers = 50, 4
    record = {"pid": dead_pid()} if stale == "dead pid" else {**process_identity(sleeper.pid), "start": 1}
    folders = [str(plant_lock(tmp_path / f"round{i}", record).parent) for i in range(rounds)]
    context = multiprocessing.get_context("fork")  # the takers only use vaezoo.files.run_folder
    barrier, results = context.Barrier(takers), context.Queue()
    processes = [context.Process(target=_race, args=(folders, barrier, results)) for _ in range(takers)]
    for process in processes:
        process.start()
    winners: dict[str, list[int]] = {}
    deadline = time.monotonic() + 120
    while sum(map(len, winners.values())) < rounds and time.monotonic() < deadline:
        try:
            folder, pid = results.get(timeout=1)
            winners.setdefault(folder, []).append(pid)
        except Exception:  # queue.Empty: a taker may have died; the checks below say so
            if not any(process.is_alive() for process in processes):
                break
    for process in processes:
        process.join(timeout=60)
    time.sleep(0.2)
    while not results.empty():
        folder, pid = results.get()
        winners.setdefault(folder, []).append(pid)
    assert [process.exitcode for process in processes] == [0] * takers
    assert {folder: len(pids) for folder, pids in winners.items()} == {folder: 1 for folder in folders}
    for folder, (pid,) in winners.items():  # the lock in place is the winner's
        assert json.loads((Path(folder) / LOCK_NAME).read_text())["pid"] == pid
        assert sorted(p.name for p in Path(folder).iterdir()) == [LOCK_NAME]


# ---- temporary files of killed writers ------------------------------------------------------------

# Kills its own process with SIGKILL just before the os.replace whose target is named KILL_NAME (or,
# with KILL_DIR, the first one into that folder): the temporary file is then whole and left behind.
KILLER = """
import os, signal
name, folder = os.environ.get("KILL_NAME"), os.environ.get("KILL_DIR")
replace = os.replace
def dying_replace(src, dst, *args, **kwargs):
    if os.path.basename(dst) == name or (folder and os.path.dirname(os.path.abspath(dst)) == folder):
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst, *args, **kwargs)
os.replace = dying_replace
"""
MINE = {"notes.tmp": b"a", ".notes.tmp": b"b", ".keep": b"c", ".model.safetensors.tmp": b"d", "data.txt": b"e"}
# in the data cache: a live writer's (this process), an older vaezoo's (no pid) fresh and old, and not the cache's
OTHERS = {
    f".cifar10-test-0.safetensors.{os.getpid()}.abcd1234.tmp": True,
    ".cifar10-test-1.safetensors.abcd1234.tmp": True,
    ".cifar10-test-2.safetensors.wxyz5678.tmp": False,
    "notes.tmp": True,
    ".cifar10-train-x.safetensors.tmp": True,  # not the pattern (no random part)
}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def killed_runs(cifar: Path, tiny_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Runs killed just before a file commit, each in a process of its own (forked from one that imported
    vaezoo and torch once), and then the run that finishes in each one's folder, these in one fresh
    process: model.safetensors and samples.png (killed in epoch 1 of 2; then the user's MINE files added
    and the run resumed), recipe.toml (then a new run into the folder) and cache (killed writing the data
    cache, OTHERS added to the cache, the run again). Case -> {"out": the folder, "killed": the killed run,
    "left": the names in the folder after it, "finished": the run after it}."""
    root = tmp_path_factory.mktemp("killed")
    cases: dict[str, dict] = {}
    for target in ("model.safetensors", "samples.png"):
        out = root / target / "run"
        run = ["run", "cifar-vae", *QUICK, "--epochs", "2", "--data-dir", str(cifar)]
        kill = Command(*run, "--out", str(out), env={"KILL_NAME": target})
        cases[target] = {"out": out, "kill": kill, "finish": Command(*run, "--resume", str(out))}
    out = root / "recipe" / "run"
    run = ["run", "cifar-vae", *QUICK, "--data-dir", str(cifar), "--out", str(out)]
    cases["recipe.toml"] = {
        "out": out,
        "kill": Command(*run, env={"KILL_NAME": "recipe.toml"}),
        "finish": Command(*run),
    }
    cache = root / "cache" / "cache"
    run = ["run", "cifar-vae", *QUICK, "--data-dir", str(tiny_cifar), "--out", str(root / "cache" / "run")]
    kill = Command(*run, env={"VAEZOO_CACHE_DIR": str(cache), "KILL_DIR": str(cache)})  # the first cache file
    cases["cache"] = {"out": cache, "kill": kill, "finish": Command(*run, env={"VAEZOO_CACHE_DIR": str(cache)})}

    for case, killed in zip(
        cases.values(), run_cli_batch([c["kill"] for c in cases.values()], root, prelude=KILLER, fork=True)
    ):
        case["killed"], case["left"] = killed, sorted(p.name for p in case["out"].iterdir())
    for target in ("model.safetensors", "samples.png"):
        for name, data in MINE.items():
            (cases[target]["out"] / name).write_bytes(data)
    for name in OTHERS:
        (cache / name).write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(cache / ".cifar10-test-2.safetensors.wxyz5678.tmp", (hours_ago, hours_ago))
    for case, finished in zip(cases.values(), run_cli_batch([c["finish"] for c in cases.values()], root)):
        case["finished"] = finished
    return cases


def test_a_killed_samples_temporary_file_goes_with_the_next_sample(small_model: Path, tmp_path: Path) -> None:
    """The temporary file of a `sample` killed just before its rename is removed
    by the next write of that picture (the 1,000-image grid: 0.7 MB); a live writer's temporary file
    and other files stay."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    grid = folder / "grid.png"
    live, other = folder / f".grid.png.{os.getpid()}.abcd1234.tmp", folder / ".other.png.12345678.tmp"
    command = ["sample", str(small_model), "-n", "1000", "--out", str(grid), "--device", "cpu"]
    (killed,) = run_cli_batch([Command(*command, env={"KILL_NAME": "grid.png"})], tmp_path, prelude=KILLER, fork=True)
    (left,) = folder.iterdir()
    assert killed.returncode == -signal.SIGKILL and left.stat().st_size > 500_000, killed.stderr[-2000:]
    live.write_bytes(b"live"), other.write_bytes(b"other")
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(folder.iterdir()) == sorted([grid, live, other])


@pytest.mark.parametrize("target", ["model.safetensors", "samples.png"])
def test_a_resume_removes_the_temporary_files_of_a_killed_run_and_nothing_else(killed_runs: dict, target: str) -> None:
    case = killed_runs[target]
    out, resumed = case["out"], case["finished"]
    assert case["killed"].returncode == -signal.SIGKILL, case["killed"].stderr[-2000:]
    (left,) = [name for name in case["left"] if name.endswith(".tmp")]
    assert left.startswith(f".{target}.") and {"state.safetensors", LOCK_NAME} <= set(case["left"])
    assert "--resume" in resumed.args and resumed.returncode == 0, resumed.stderr[-2000:]
    assert temp_files(out) == sorted(name for name in MINE if name.endswith(".tmp")) and not (out / left).exists()
    assert all((out / name).read_bytes() == data for name, data in MINE.items())
    assert not (out / LOCK_NAME).exists()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_new_run_into_a_killed_runs_folder_removes_its_temporary_files(killed_runs: dict) -> None:
    case = killed_runs["recipe.toml"]
    assert case["killed"].returncode == -signal.SIGKILL, case["killed"].stderr[-2000:]
    assert [name for name in case["left"] if name != LOCK_NAME][0].startswith(".recipe.toml.")
    again = case["finished"]
    assert again.returncode == 0, again.stderr[-2000:]
    assert temp_files(case["out"]) == []


def test_the_data_cache_removes_temporary_files_of_dead_writers_only(killed_runs: dict) -> None:
    case = killed_runs["cache"]
    assert case["killed"].returncode == -signal.SIGKILL, case["killed"].stderr[-2000:]
    (dead,) = [name for name in case["left"] if name.endswith(".tmp")]  # the first cache file, not renamed
    assert dead.startswith(".cifar10-train-") and f".safetensors.{os.getpid()}." not in dead
    again = case["finished"]
    assert again.returncode == 0, again.stderr[-2000:]
    assert temp_files(case["out"]) == sorted(name for name, kept in OTHERS.items() if kept)
    assert sorted(p.name.split("-")[1] for p in case["out"].glob("*.safetensors")) == [
        "test",
        "train",
    ]  # the two splits, written whole


# ---- a refused run leaves no folder ---------------------------------------------------------------


REFUSED = {
    "data dir is a FIFO": (["--data-dir", "{fifo}"], "is a FIFO, not a folder"),
    "model that does not build": (["--data-dir", "{cifar}", "--set", "model.iw_samples=0"], "iw_samples"),
    "resume of a finished run": (["--data-dir", "{cifar}", "--resume", "{done}"], "already trained to epoch 1"),
}


@pytest.fixture(scope="module")
def done_run(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("done") / "run"
    vaezoo.fit(
        "cifar-vae",
        sets=[*TINY_SETS, "train.test_limit=16"],
        options={"train.epochs": 1, "train.limit": 48, "train.seed": 1},
        out=out,
        data_dir=cifar,
        device="cpu",
    )
    return out


@pytest.fixture(scope="module")
def refused_runs(cifar: Path, done_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """REFUSED case -> (its folder, the run into a new folder, the run into an empty one): one process."""
    root = tmp_path_factory.mktemp("refused")
    folders, commands = {}, []
    for index, (case, (args, _)) in enumerate(REFUSED.items()):
        folder = folders[case] = root / str(index)
        folder.mkdir()
        os.mkfifo(folder / "fifo")
        (folder / "empty").mkdir()
        args = [arg.format(fifo=folder / "fifo", cifar=cifar, done=done_run) for arg in args]
        commands += [
            ["run", "cifar-vae", *QUICK, *args, "--out", str(folder / "new" / "deeper" / "run")],
            ["run", "cifar-vae", *QUICK, *args, "--out", str(folder / "empty")],
        ]
    results = run_cli_batch(commands, root)
    return {case: (folders[case], *results[2 * i : 2 * i + 2]) for i, case in enumerate(REFUSED)}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_run_removes_the_folders_it_created_and_leaves_an_existing_one_empty(
    refused_runs: dict, case: str
) -> None:
    folder, into_new, into_empty = refused_runs[case]
    _, message = REFUSED[case]
    assert message in one_line(into_new)
    assert not (folder / "new").exists()
    assert message in one_line(into_empty)
    assert (folder / "empty").is_dir() and list((folder / "empty").iterdir()) == []


def test_a_refused_run_keeps_a_folder_that_another_file_appeared_in(cifar: Path, tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "a" / "run").acquire()
    assert lock.created == [tmp_path / "a" / "run", tmp_path / "a"]
    (tmp_path / "a" / "note.txt").write_text("someone else's")
    lock.release()
    lock.remove_created()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["note.txt"]


# ---- a damaged recipe.toml on resume names the file -----------------------------------------------


DAMAGED_RECIPES = {
    "train not a table": lambda text: "train = 3\n" + text.split("[train]")[0],
    "not TOML": lambda text: text + "\n[[[",
    "not UTF-8": lambda text: "\xff",
    "unknown key": lambda text: text.replace("[train]", "[train]\nbogus = 1"),
    "no name": lambda text: text.replace('name = "cifar-vae"', ""),
    "a value that does not build": lambda text: text.replace("iw_samples = 1", "iw_samples = 0"),
    "a wrong type": lambda text: text.replace("download = true", 'download = "yes"'),
}


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def damaged_resumes(done_run: Path, cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """DAMAGED_RECIPES case -> (a copy of the run with the damaged recipe.toml, its files before, the
    resume of it): the resumes of all the cases in one fresh process."""
    import shutil

    root = tmp_path_factory.mktemp("damaged")
    runs, commands = {}, []
    for index, (case, damage) in enumerate(DAMAGED_RECIPES.items()):
        out = shutil.copytree(done_run, root / str(index) / "run")
        damaged = damage((out / "recipe.toml").read_text())
        (out / "recipe.toml").write_bytes(damaged.encode("latin-1") if case == "not UTF-8" else damaged.encode())
        runs[case] = (out, contents(out))
        commands.append(
            ["run", "cifar-vae", "--epochs", "2", "--device", "cpu", "--data-dir", str(cifar), "--resume", str(out)]
        )
    return {case: (*runs[case], result) for case, result in zip(DAMAGED_RECIPES, run_cli_batch(commands, root))}


@pytest.mark.parametrize("case", DAMAGED_RECIPES)
def test_a_damaged_recipe_toml_on_resume_is_one_line_naming_it(damaged_resumes: dict, case: str) -> None:
    out, before, refused = damaged_resumes[case]
    line = one_line(refused)  # names the file and what is wrong with it
    assert f"{out / 'recipe.toml'} is damaged" in line or f"{out / 'recipe.toml'} is not valid TOML" in line, line
    assert contents(out) == before


# ---- data folders that are not folders, eval on other data ----------------------------------------


NOT_FOLDERS = ["FIFO", "file", "symlink to itself", "symlink loop of two", "below a file"]
DATA_RECIPES = ("cifar-vae", "folder-vae", "mnist-vae")


def not_a_folder(folder: Path, kind: str) -> Path:
    """A --data-dir in `folder` that is not a folder."""
    path = folder / "data"
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "file":
        path.write_text("not a folder")
    elif kind == "symlink to itself":
        path.symlink_to("data")
    elif kind == "symlink loop of two":
        path.symlink_to("other")
        (folder / "other").symlink_to("data")
    else:
        (folder / "file").write_text("x")
        path = folder / "file" / "data"
    return path


@pytest.fixture(scope="module")
def not_folder_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """NOT_FOLDERS kind -> (its folder, its data path, a run of each of DATA_RECIPES with it as --data-dir,
    a cifar-vae run with it as VAEZOO_DATA_DIR): the runs of all the kinds in one fresh process."""
    root = tmp_path_factory.mktemp("not-folders")
    kinds, commands = {}, []
    for index, kind in enumerate(NOT_FOLDERS):
        folder = root / str(index)
        folder.mkdir()
        path = kinds[kind] = not_a_folder(folder, kind)
        out = str(folder / "run")
        commands += [Command("run", recipe, *QUICK, "--data-dir", str(path), "--out", out) for recipe in DATA_RECIPES]
        commands.append(Command("run", "cifar-vae", *QUICK, "--out", out, env={"VAEZOO_DATA_DIR": str(path)}))
    results = run_cli_batch(commands, root)
    n = len(DATA_RECIPES) + 1
    return {kind: (root / str(i), kinds[kind], results[i * n : (i + 1) * n]) for i, kind in enumerate(NOT_FOLDERS)}


@pytest.mark.parametrize("kind", NOT_FOLDERS)
def test_a_data_dir_that_is_not_a_folder_is_one_line_naming_it(not_folder_runs: dict, kind: str) -> None:
    folder, path, (*refused, from_env) = not_folder_runs[kind]
    expected = {
        "FIFO": "is a FIFO, not a folder",
        "file": "is a file, not a folder",
        "below a file": "cannot be read (Not a directory)",
    }.get(kind, "is a symbolic link loop")
    for recipe, result in zip(DATA_RECIPES, refused, strict=True):
        assert result.args[1] == recipe
        assert one_line(result) == f"vaezoo: error: --data-dir {path} {expected}: point it at a folder of data", recipe
    assert one_line(from_env) == f"vaezoo: error: VAEZOO_DATA_DIR {path} {expected}: point it at a folder of data"
    assert not (folder / "run").exists()


def test_an_image_folder_path_that_is_not_a_file_or_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    """A path key may name a file or a folder, never a FIFO; a relative one is in the data root."""
    os.mkfifo(tmp_path / "fifo")
    refused = run_cli(
        "run",
        "folder-vae",
        *QUICK,
        "--set",
        "dataset.path=fifo",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "run"),
    )
    assert one_line(refused) == (
        f"vaezoo: error: dataset.path {tmp_path / 'fifo'} is a FIFO, not a file or folder: point it at a file or "
        "folder of data"
    )


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder-vae model trained on a folder of 32x32 images, and a folder of 64x64 images."""
    import numpy as np
    from PIL import Image

    base = tmp_path_factory.mktemp("folders")
    for side in (32, 64):
        (base / f"images{side}").mkdir()
        for index in range(20):
            Image.fromarray(np.random.default_rng(index).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
                base / f"images{side}" / f"{index}.png"
            )
    vaezoo.fit(
        "folder-vae",
        sets=TINY_SETS,
        options={"train.epochs": 1},
        out=base / "run",
        data_dir=base / "images32",
        device="cpu",
    )
    return base / "run" / "model.safetensors", base / "images64"


def test_eval_of_a_model_on_images_of_another_shape_is_refused(folder_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, images64 = folder_model
    changes = (
        (lambda m: m["vaezoo.recipe"]["dataset"].update(size=16), (3, 16, 16)),
        (lambda m: m["vaezoo.recipe"]["dataset"].update(grayscale=True), (1, 32, 32)),
    )
    commands = [["eval", str(model), "--data-dir", str(images64), "--device", "cpu", "--json"]]
    for index, (change, _) in enumerate(changes):
        other = rewrite(model, tmp_path / f"other{index}.safetensors", change)
        for command in (["eval"], ["reconstruct", "--out", str(tmp_path / "r.png")]):
            commands.append([*command, str(other), "--data-dir", str(images64), "--device", "cpu"])
    same, *refused = run_cli_batch(commands, tmp_path)  # one fresh process
    assert same.returncode == 0 and json.loads(same.stdout)["images"] == 2, same.stderr[-2000:]  # resized: fine
    for result, (_, shape) in zip(refused, [changes[0]] * 2 + [changes[1]] * 2, strict=True):
        assert one_line(result) == (
            "vaezoo: error: the model was trained on images of shape (3, 32, 32) (C, H, W) but dataset "
            f"'image-folder' gives {shape} here: "
            "evaluate it on data like those it was trained on"
        ), result.args
    assert not (tmp_path / "r.png").exists()


def test_eval_of_a_conditional_model_on_other_classes_is_refused(cifar: Path, tmp_path: Path) -> None:
    sets = [
        "model.encoder_hidden=[4,8,8]",
        "model.decoder_hidden=[8,8,4]",
        "latent_dim=4",
        "model.label_channels=2",
        "model.label_dim=4",
        "train.batch_size=16",
        "train.sample_count=4",
        "train.test_limit=16",
    ]
    vaezoo.fit(
        "cifar-cvae",
        sets=sets,
        options={"train.epochs": 1, "train.limit": 48},
        out=tmp_path / "run",
        data_dir=cifar,
        device="cpu",
    )
    renamed = [f"class{i}" for i in range(10)]
    other = rewrite(
        tmp_path / "run" / "model.safetensors",
        tmp_path / "other.safetensors",
        lambda m: m["vaezoo.data"].update(classes=renamed),
    )
    evals = [
        ["eval", str(model), "--data-dir", str(cifar), "--limit", "16", "--device", "cpu"]
        for model in (other, tmp_path / "run" / "model.safetensors")
    ]
    refused, fine = run_cli_batch(evals, tmp_path)  # one fresh process
    assert one_line(refused) == (
        f"vaezoo: error: the model is conditional on 10 classes ({', '.join(renamed)}) but dataset 'cifar10' has 10 "
        "(airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck) here: its labels would mean "
        "other classes"
    )
    assert fine.returncode == 0, fine.stderr[-2000:]
