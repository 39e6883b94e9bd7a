"""Settings a run owns: paths (never empty), its precision (resolved once, kept on resume, recorded per
epoch, never steered by the precision cache) and its CPU threads."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import Command, run_cli_batch
from tinydata import TINY_ARGS, tiny_cifar  # noqa: F401  (fixture)

from vaezoo.errors import VaezooError
from vaezoo.trainer import devices

SMALL = ["--limit", "32", "--set", "train.test_limit=16", "--device", "cpu", *TINY_ARGS]


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(run: Path) -> dict:
    return tomllib.loads((run / "recipe.toml").read_text())["train"]


def test_empty_and_blank_paths_are_refused_in_one_line(cifar: Path, small_run: Path, tmp_path: Path) -> None:
    """An empty or whitespace-only path (option, environment variable or recipe key) would name the current
    folder: it is one line naming it, exit 2, and nothing is written there."""
    here = tmp_path / "here"
    here.mkdir()
    model = str(small_run / "model.safetensors")
    cases = [
        (["run", "cifar-vae", *SMALL, "--out", ""], {}, "--out is empty"),
        (["run", "cifar-vae", *SMALL, "--out", "  "], {}, "--out is only whitespace"),
        (["run", "cifar-vae", *SMALL, "--data-dir", ""], {}, "--data-dir is empty"),
        (["run", "cifar-vae", *SMALL, "--resume", " "], {}, "--resume is only whitespace"),
        (["run", "cifar-vae", *SMALL, "--out", str(tmp_path / "a")], {"VAEZOO_DATA_DIR": ""}, "VAEZOO_DATA_DIR is"),
        (["run", "cifar-vae", *SMALL, "--out", str(tmp_path / "b")], {"VAEZOO_CACHE_DIR": " "}, "VAEZOO_CACHE_DIR is"),
        (
            [
                "run",
                "cifar-vae",
                *SMALL,
                "--out",
                str(tmp_path / "c"),
                "--set",
                'dataset={name="image-folder",path=" "}',
            ],
            {},
            "dataset.path is only whitespace",
        ),
        (["push", str(small_run), "x/y", "--dry-run", ""], {}, "--dry-run is empty"),
        (["push", "", "x/y", "--dry-run", str(tmp_path / "d")], {}, "RUN_DIR_OR_MODEL is empty"),
        (["sample", model, "--out", ""], {}, "--out is empty"),
        (["reconstruct", model, "--out", " "], {}, "--out is only whitespace"),
        (["interpolate", model, "--data-dir", ""], {}, "--data-dir is empty"),
        (["eval", model, "--data-dir", "\t"], {}, "--data-dir is only whitespace"),
    ]
    results = run_cli_batch(
        [Command(*args, env={"VAEZOO_DATA_DIR": str(cifar), **env}, cwd=here) for args, env, _ in cases], tmp_path
    )
    for (args, _, message), result in zip(cases, results):
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(here.iterdir()) == [] and not (tmp_path / "a").exists() and not (tmp_path / "d").exists()
    from vaezoo.errors import checked_path

    with pytest.raises(VaezooError, match="--out is empty"):
        checked_path("", "--out")
    assert checked_path(" a ", "--out") == " a "


# The CPU of the test machine decides what auto may choose; this prelude says it has native bf16 (or not,
# FAKE_BF16=0) and makes the probe find bf16 faster, so that a run's auto choice is bf16 and a probe
# made again without native bf16 would say fp32.
FAKE_CPU = """
import os
from vaezoo.trainer import devices
devices.cpu_has_native_bf16 = lambda: os.environ["FAKE_BF16"] == "1"
devices.FASTER = 1e9
"""


def test_a_resume_keeps_the_precision_auto_chose_and_each_epoch_records_its_own(
    tiny_cifar: Path, tmp_path: Path
) -> None:
    """Started in bf16 by auto, a run resumes in bf16 even where auto would now choose fp32 (another
    machine state, an emptied cache); recipe.toml records bf16; an explicit --precision on resume takes
    effect and metrics.jsonl says which epochs trained how."""
    run = tmp_path / "run"
    cache = {"VAEZOO_CACHE_DIR": str(tmp_path / "cache"), "VAEZOO_DATA_DIR": str(tiny_cifar)}
    common = ["run", "cifar-vae", *SMALL]
    first, resumed, explicit = run_cli_batch(
        [
            Command(*common, "--epochs", "1", "--out", str(run), env={**cache, "FAKE_BF16": "1"}),
            Command(*common, "--resume", str(run), "--epochs", "2", env={**cache, "FAKE_BF16": "0"}),
            Command(
                *common, "--resume", str(run), "--epochs", "3", "--precision", "fp32", env={**cache, "FAKE_BF16": "0"}
            ),
        ],
        tmp_path,
        prelude=FAKE_CPU,
        fork=True,
    )
    assert first.returncode == 0 and resumed.returncode == 0 and explicit.returncode == 0, explicit.stderr
    assert "in bf16" in first.stderr and "in bf16" in resumed.stderr and "in fp32" in explicit.stderr
    assert [line["precision"] for line in _lines(run)] == ["bf16", "bf16", "fp32"]
    assert _train(run)["precision"] == "fp32"  # what trained last, as for --lr


def test_the_precision_cache_never_steers_a_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """precision.json is only a regular file inside the cache folder, of at most CACHE_BYTES: a link to
    a file elsewhere, an oversized file or one that is not vaezoo's is ignored with a warning (a probe
    decides), and the link and its target are left as they were."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    probes = []

    def fp32_faster(precisions):
        probes.append(1)
        return [1.0, 2.0]

    assert devices.resolve_precision("auto", cpu, fp32_faster, "k").name == "fp32"
    cache = tmp_path / "cache" / "precision.json"
    (entry,) = json.loads(cache.read_text())
    planted = tmp_path / "elsewhere.json"
    planted.write_text(json.dumps({entry: "bf16"}))
    hostile = {
        "a link out of the cache": lambda: cache.symlink_to(planted),
        "an oversized file": lambda: cache.write_text(json.dumps({entry: "bf16"}) + " " * (devices.CACHE_BYTES + 1)),
        "a file that is not vaezoo's": lambda: cache.write_text(json.dumps({entry: "bf16", "x": {"y": 1}})),
        "not JSON": lambda: cache.write_bytes(b"\xff\x00"),
    }
    for what, plant in hostile.items():
        cache.unlink(missing_ok=True)
        plant()
        probes.clear()
        assert devices.resolve_precision("auto", cpu, fp32_faster, "k").name == "fp32", what
        assert probes == [1], what
        warning = capsys.readouterr().err
        assert warning.startswith("vaezoo: warning: the precision cache") and warning.count("\n") == 1, warning
    cache.unlink()
    cache.symlink_to(planted)
    devices.resolve_precision("auto", cpu, fp32_faster, "k")
    assert cache.is_symlink() and json.loads(planted.read_text()) == {entry: "bf16"}


def test_auto_chooses_alike_for_any_thread_count_and_process_count(tiny_cifar: Path, tmp_path: Path, monkeypatch):
    """The probe times the global batch and its cached choice is per machine and model, not per thread
    count or number of processes: a run with 2 threads reuses the choice a run with 1 thread made, so
    `--nproc 1` (threads = cores) and `--nproc 2` (one thread per worker) train alike."""
    from tinydata import fit_tiny

    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    batches = []

    def timer(model, x, y, device, **kw):
        def probe(precisions):
            batches.append(len(x))
            return [1.0, 0.5]

        return probe

    monkeypatch.setattr(devices, "time_steps", timer)
    threads = torch.get_num_threads()
    try:
        for count in ("1", "2"):
            monkeypatch.setenv("OMP_NUM_THREADS", count)
            torch.set_num_threads(int(count))  # as an earlier vaezoo under OMP_NUM_THREADS would run
            fit_tiny(tiny_cifar, tmp_path / f"threads{count}", precision="auto", batch_size=32)
    finally:
        torch.set_num_threads(threads)
    assert batches == [32]  # one probe, of the global batch; the second run took its choice from the cache
    assert _train(tmp_path / "threads1")["precision"] == _train(tmp_path / "threads2")["precision"] == "bf16"


def test_threads_is_an_option_of_the_run_and_may_change_on_resume(cifar: Path, tmp_path: Path) -> None:
    """--threads N (and train.threads) sets the CPU threads, shown at start-up and recorded in
    recipe.toml; auto follows OMP_NUM_THREADS; a resume may change it; a bad value is one line."""
    run, auto = tmp_path / "run", tmp_path / "auto"
    common = ["run", "cifar-vae", *SMALL]
    started, resumed, omp, zero, bad = run_cli_batch(
        [
            [*common, "--epochs", "1", "--out", str(run), "--threads", "2"],
            [*common, "--resume", str(run), "--epochs", "2", "--set", "train.threads=1"],
            Command(*common, "--epochs", "1", "--out", str(auto), env={"OMP_NUM_THREADS": "3"}),
            [*common, "--threads", "0"],
            [*common, "--set", "train.threads=many"],
        ],
        tmp_path,
        env={"VAEZOO_DATA_DIR": str(cifar)},
    )
    assert started.returncode == resumed.returncode == omp.returncode == 0, resumed.stderr
    assert "with 2 CPU thread(s) (train.threads 2)" in started.stderr
    assert "with 1 CPU thread(s) (train.threads 1)" in resumed.stderr and _train(run)["threads"] == 1
    assert "with 3 CPU thread(s) (train.threads auto)" in omp.stderr and _train(auto)["threads"] == "auto"
    assert zero.returncode == 2 and "--threads" in zero.stderr
    assert bad.returncode == 2 and 'train.threads must be "auto" or a whole number' in bad.stderr


def test_auto_threads_is_half_the_cpus_without_omp_num_threads(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert devices.resolve_threads("auto") == 8 and devices.resolve_threads(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert devices.resolve_threads("auto") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert devices.resolve_threads("auto") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "99999999")  # torch.set_num_threads would crash the process
    with pytest.raises(VaezooError, match="OMP_NUM_THREADS=99999999 is more than 1024 threads"):
        devices.resolve_threads("auto")


def test_the_trainer_reads_one_typed_frozen_settings_object() -> None:
    """The recipe's train table as one TrainSettings (an attribute per key of the table, validated once, when
    the recipe is resolved); a Run carries it, and nothing changes it behind the run's back."""
    import dataclasses

    from vaezoo.recipes.resolve import TRAIN_DEFAULTS, resolve_recipe
    from vaezoo.trainer.settings import TrainSettings

    assert [field.name for field in dataclasses.fields(TrainSettings)] == list(TRAIN_DEFAULTS)
    settings = TrainSettings.of(resolve_recipe("cifar-vae", ["train.group_lr={model=0.5}"], {"train.lr": 0.01}))
    assert settings.lr == 0.01 and settings.lr_of("model") == 0.5 and settings.lr_of("other") == 0.01
    assert settings.lr_schedule == {"name": "constant", "warmup_steps": 0} and settings.precision == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lr = 1.0  # type: ignore[misc]


def test_make_run_makes_a_run_ready_to_train_and_writes_nothing(tiny_cifar: Path, tmp_path: Path, monkeypatch) -> None:
    """vaezoo.api.make_run: the one way to make a run (fit, the CLI through fit, bench/families.py): data,
    model, precision (auto measured once and recorded in the recipe and the settings), optimizers."""
    from tinydata import TINY_SETS

    from vaezoo.api import make_run
    from vaezoo.recipes.resolve import resolve_recipe
    from vaezoo.trainer.loop import train

    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    recipe = resolve_recipe("cifar-vae", TINY_SETS, {"train.epochs": 1, "train.limit": 32, "train.test_limit": 16})
    run = make_run(recipe, torch.device("cpu"), out_dir=tmp_path / "out", data_dir=tiny_cifar)
    assert run.precision.name == recipe["train"]["precision"] == run.settings.precision != "auto"
    assert len(run.train_images) == 32 and len(run.test_images) == 16 and set(run.optimizers) == {"model"}
    assert run.state.step == 0 and not (tmp_path / "out").exists()
    metrics = train(run)
    assert metrics["step"] == 2 and metrics["precision"] == run.precision.name
