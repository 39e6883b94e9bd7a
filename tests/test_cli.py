"""The command line end to end on the real CIFAR-10 copy (`run`, then `sample`, `inspect`, `eval` in
fresh processes), and bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import pytest
from conftest import Command, run_cli, run_cli_batch
from tinydata import TINY_ARGS, TWO_EPOCHS, error_lines, one_line

import vaezoo
from vaezoo.recipes.resolve import resolve_recipe

WIDTHS = ["--set", "encoder.hidden=[8,16,32]", "--set", "decoder.hidden=[32,16,8]"]


@pytest.fixture(scope="module")
def cifar_run(cifar, tmp_path_factory):
    """`vaezoo run cifar-vae --limit 512 --epochs 1` on the real data, in a fresh process."""
    out = tmp_path_factory.mktemp("cli") / "run"
    process = run_cli(
        "run",
        "cifar-vae",
        "--limit",
        "512",
        "--epochs",
        "1",
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
        "--set",
        "train.test_limit=256",
        *WIDTHS,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    return out, process


@pytest.mark.slow
def test_run_writes_the_run_folder(cifar_run):
    out, process = cifar_run
    for name in ("model.safetensors", "state.safetensors", "metrics.jsonl", "samples.png", "recipe.toml"):
        assert (out / name).is_file(), name
        assert name in process.stderr
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(line)
    assert {"epoch", "train_loss", "test_loss", "seconds", "images_per_s"} <= set(metrics)
    assert (
        metrics["epoch"] == 1 and 0 < metrics["test_loss"] < 3 * 32 * 32 * 0.7
    )  # nats per image, below the uniform-guess BCE
    from PIL import Image

    data = (out / "samples.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (2 + 8 * 34, 2 + 8 * 34) and image.mode == "RGB"  # 64 samples, 8x8 grid, 2px padding
    recipe = tomllib.loads((out / "recipe.toml").read_text(encoding="utf-8"))
    assert (
        recipe["train"]["limit"] == 512
        and recipe["train"]["epochs"] == 1
        and recipe["encoder"]["hidden"] == [8, 16, 32]
    )
    assert resolve_recipe(out / "recipe.toml") == recipe == vaezoo.load(out / "model.safetensors").recipe


@pytest.mark.slow
def test_sample_in_a_fresh_process_inspect_and_eval(cifar_run, cifar, tmp_path):
    out, _ = cifar_run
    model = str(out / "model.safetensors")
    sampled = run_cli("sample", model, "-n", "16", "--seed", "1", "--out", str(tmp_path / "s.png"))
    assert sampled.returncode == 0, sampled.stderr
    from PIL import Image

    with Image.open(tmp_path / "s.png") as image:
        assert image.size == (2 + 4 * 34, 2 + 4 * 34)
    again, inspected, evaluated = run_cli_batch(
        [
            ["sample", model, "-n", "16", "--seed", "1", "--out", str(tmp_path / "again.png")],
            ["inspect", model, "--json"],
            ["eval", model, "--json", "--limit", "200", "--data-dir", str(cifar), "--device", "cpu"],
        ],
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "again.png").read_bytes()

    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert {"sha256", "recipe", "components", "parameters", "metrics"} <= set(info)
    import hashlib

    assert info["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert info["recipe"]["name"] == "cifar-vae" and info["parameters"] > 0
    assert all({"kind", "name", "distribution", "version"} <= set(c) for c in info["components"])
    assert {(c["kind"], c["name"], c["distribution"]) for c in info["components"]} >= {
        ("encoder", "conv", "vaezoo"),
        ("loss", "bce-kl", "vaezoo"),
    }
    assert info["metrics"]["test_loss"] == json.loads((out / "metrics.jsonl").read_text())["test_loss"]

    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["images"] == 200 and metrics["loss"] > 0


@pytest.mark.slow
def test_resume_continues_the_cli_run(cifar_run, cifar, tmp_path):
    out, _ = cifar_run
    more = str(tmp_path / "more")
    resumed = run_cli(
        "run", "cifar-vae", "--resume", str(out), "--epochs", "2", "--data-dir", str(cifar), "--out", more
    )
    assert resumed.returncode == 0, resumed.stderr
    lines = (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert vaezoo.load(tmp_path / "more" / "model.safetensors").metadata["training"]["epochs"] == 2


HELP = ("run", "sample", "eval", "inspect", "list", "plugins")
BAD_INPUT = [
    (["run", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["run", "cifar-vae", "--set", "encoder.name=nope"], "unknown encoder 'nope'"),
    (["run", "cifar-vae", "--set", "train.epochs"], "bad --set"),
    (["run", "cifar-vae", "--set", "train.bogus=1"], "unknown key train.bogus"),
    (["run", "cifar-vae", "--epochs", "0"], "train.epochs must be at least 1"),
    (["run", "cifar-vae", "--device", "tpu"], "device"),
    (["run", "cifar-vae", "--epochs", "many"], "--epochs"),
    (["run", "cifar-vae", "--resume", "/nonexistent/run"], "no recipe.toml"),
    (["list", "widgets"], "unknown kind 'widgets'"),
    (["sample", "/nonexistent/model.safetensors"], "does not exist"),
    (["nosuchcommand"], "nosuchcommand"),
]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    """The commands of the quick tests below, in one fresh process: {name: completed process}, with
    "empty" (a data folder without CIFAR-10) and "fake" (a model file that is not one)."""
    root = tmp_path_factory.mktemp("quick")
    empty, fake = root / "empty", root / "model.safetensors"
    empty.mkdir()
    fake.write_text("not a model")
    commands = {
        **{f"help {command}": [command, "--help"] for command in HELP},
        **{f"bad {index}": args for index, (args, _) in enumerate(BAD_INPUT)},
        "no data": [
            "run",
            "cifar-vae",
            "--data-dir",
            str(empty),
            "--epochs",
            "1",
            "--out",
            str(root / "out"),
            *TINY_ARGS,
        ],
        **{f"fake {command}": [command, str(fake)] for command in ("sample", "inspect", "eval")},
        "debug": Command("--debug", "run", "no-such-recipe", env={"VAEZOO_DEBUG": None}),
    }
    return {"empty": empty, "fake": fake, **dict(zip(commands, run_cli_batch(list(commands.values()), root)))}


def test_version_and_help(quick):
    process = run_cli("--version")
    assert process.returncode == 0 and "vaezoo" in process.stdout and "torch" in process.stdout
    for command in HELP:
        assert quick[f"help {command}"].returncode == 0, command


@pytest.mark.parametrize("index", range(len(BAD_INPUT)), ids=[" ".join(args) for args, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(quick, index):
    result, message = quick[f"bad {index}"], BAD_INPUT[index][1]
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("vaezoo: error:")


def test_missing_data_and_not_a_checkpoint(quick):
    result = quick["no data"]
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "CIFAR-10 not found under" in lines[0] and str(quick["empty"]) in lines[0]
    for command in ("sample", "inspect", "eval"):
        result = quick[f"fake {command}"]
        lines = error_lines(result.stderr)
        assert result.returncode == 2 and len(lines) == 1 and str(quick["fake"]) in lines[0], lines


def test_unknown_recipe_in_a_fresh_process():
    process = run_cli("run", "cifar-vea")
    assert process.returncode == 2 and "Traceback" not in process.stderr
    (line,) = error_lines(process.stderr)
    assert "unknown recipe 'cifar-vea'" in line and "did you mean cifar-vae" in line


def test_debug_shows_the_traceback(quick):
    assert quick["debug"].returncode == 2 and "Traceback" in quick["debug"].stderr


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


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BAD_VALUES)), ids=[expected for _, expected in BAD_VALUES])
def test_bad_values_are_one_line_exit_2(bad_value_runs: list, index: int) -> None:
    args, expected = BAD_VALUES[index]
    out, result = bad_value_runs[index]
    assert result.args[-len(args) :] == args
    assert expected in one_line(result)
    assert not (out / "recipe.toml").exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_and_sample_bounds(small_model: Path, tmp_path: Path) -> None:
    negative, huge = run_cli_batch(
        [
            ["eval", str(small_model), "--limit", "-5"],
            ["sample", str(small_model), "-n", "100000", "--out", str(tmp_path / "s.png")],
        ],
        tmp_path,
    )
    one_line(negative)
    assert "10000" in one_line(huge)


def test_eval_json_never_prints_nan(capsys) -> None:
    from vaezoo.cli import _print_json

    _print_json({"loss": float("nan"), "terms": {"x": float("inf")}, "ok": 1.5})
    assert json.loads(capsys.readouterr().out) == {"loss": None, "terms": {"x": None}, "ok": 1.5}
