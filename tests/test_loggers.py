"""Experiment loggers, a plugin kind (issue 26, item 10): a real run with `--logger mlflow` read back from
its MLflow store (params, metric history per epoch equal to metrics.jsonl, artifacts; a resume continues
the same MLflow run), a third-party logger installed for real (a dist-info folder with entry points) named
by its qualified name, a logger that raises dropped without losing the run, and one line, exit 2, before
anything is written for an unknown logger or a missing package."""

from __future__ import annotations

import importlib.util
import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import Command, run_cli_batch
from tinydata import TINY_ARGS, error_lines

import vaezoo
from vaezoo.errors import RecipeError, UnknownName
from vaezoo.recipes.resolve import validate

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
SMALL = [*TINY_ARGS, "--set", "train.limit=64", "--set", "train.test_limit=32", "--device", "cpu"]
TRACKER = """
    '''A third-party plugin with three loggers: `recorder` writes each call it gets to OUT/recorder.jsonl,
    `flaky` raises when an epoch ends, `needy` needs a package that is not installed.'''

    import json

    import vaezoo


    class Recorder(vaezoo.Logger):
        def __init__(self, *, tag: str = "t"):
            self.tag, self.path = tag, None

        def _write(self, *record):
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps([self.tag, *record]) + "\\n")

        def start(self, run):
            self.path = run.out_dir / "recorder.jsonl"
            self._write("start", run.epoch, run.recipe["name"], run.device)
            return f"recording into {self.path.name}"

        def log_metrics(self, metrics, epoch):
            self._write("log_metrics", epoch, metrics["test_loss"])

        def log_images(self, images, epoch):
            self._write("log_images", epoch, {name: [list(a.shape), str(a.dtype)] for name, a in images.items()})

        def finish(self, status):
            self._write("finish", status)


    class Flaky(vaezoo.Logger):
        def log_metrics(self, metrics, epoch):
            raise RuntimeError("the tracking server went away")

        def finish(self, status):
            raise AssertionError("a dropped logger is not called again")


    class Needy(vaezoo.Logger):
        def __init__(self):
            import vaezoo_tracker_nothere  # noqa: F401


    @vaezoo.hookimpl
    def register_loggers(register):
        register("recorder", Recorder, summary="Records each call")
        register("flaky", Flaky, summary="Raises when an epoch ends")
        register("needy", Needy, summary="Needs a missing package")
"""


def install_tracker(root: Path) -> dict[str, str]:
    """The distribution `vaezoo-tracker` 0.1 installed in `root` as pip installs one; the environment
    that puts it on the path."""
    info = root / "vaezoo_tracker-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vaezoo-tracker\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[vaezoo]\ntracker = vaezoo_tracker\n", encoding="utf-8")
    (root / "vaezoo_tracker.py").write_text(textwrap.dedent(TRACKER), encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every CLI command of these tests, in one process: an MLflow run of one epoch resumed to two, a run
    with the third-party loggers (and the deprecated --tensorboard), and the refusals."""
    tmp = tmp_path_factory.mktemp("loggers")
    env = {**install_tracker(tmp / "site"), "VAEZOO_DATA_DIR": str(cifar), "MLFLOW_TRACKING_URI": None}
    ml = tmp / "runs" / "ml"
    commands = {
        "refused": [
            *("run", "cifar-vae", *SMALL, "--epochs", "1", "--out", str(tmp / "refused")),
            *("--logger", "vaezoo-tracker:recorder", "--logger", "nope"),
        ],
        "needy": ["run", "cifar-vae", *SMALL, "--epochs", "1", "--logger", "needy", "--out", str(tmp / "needy")],
        "tracked": [
            *("run", "cifar-vae", *SMALL, "--epochs", "2", "--out", str(tmp / "tracked")),
            *("--logger", "vaezoo-tracker:recorder", "--logger", "flaky", "--tensorboard"),
        ],
        # the first update makes the weights non-finite: the run fails on its own (exit 1)
        "failed": ["run", "cifar-vae", *SMALL, "--epochs", "1", "--lr", "1e30", "--logger", "recorder"]
        + ["--out", str(tmp / "failed")],
    }
    if HAS_MLFLOW:
        commands["mlflow"] = ["run", "cifar-vae", *SMALL, "--epochs", "1", "--logger", "mlflow", "--out", str(ml)]
        commands["mlflow resumed"] = Command("run", "cifar-vae", "--resume", str(ml), "--epochs", "2")
    results = run_cli_batch(list(commands.values()), tmp, env=env)
    return {"tmp": tmp, **dict(zip(commands, results))}


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'vaezoo[mlflow]')")
def test_an_mlflow_run_is_in_a_store_next_to_the_run_folder_and_a_resume_continues_it(runs: dict) -> None:
    from mlflow.tracking import MlflowClient

    first, resumed = runs["mlflow"], runs["mlflow resumed"]
    assert first.returncode == 0 and resumed.returncode == 0, first.stderr + resumed.stderr
    folder = runs["tmp"] / "runs"
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve().as_posix()}"
    assert f"see it with: mlflow ui --backend-store-uri {uri}" in first.stderr
    assert "INFO" not in first.stderr  # MLflow's and Alembic's database set-up stays off the console
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("cifar-vae").experiment_id])  # one: resumed, not new
    assert run.info.status == "FINISHED" and run.info.run_name == "ml"
    assert run.data.params["train.batch_size"] == "16" and run.data.params["encoder.hidden"] == "[4, 8, 8]"
    assert run.data.params["train.epochs"] == "1"  # MLflow never changes a param: the run's first value stays
    lines = metrics(folder / "ml")
    assert [line["epoch"] for line in lines] == [1, 2]
    for key in ("train_loss", "test_loss", "test_kl", "lr", "images_per_s"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(line["epoch"], line[key]) for line in lines], key
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"recipe.toml", "metrics.jsonl", "model.safetensors", "images"} <= artifacts
    pictures = client.list_artifacts(run.info.run_id, "images")  # NAME+step+EPOCH+timestamp+...png
    images = {tuple(item.path.split("/")[1].split("+")[:3]) for item in pictures}
    assert ("samples", "step", "2") in images and ("reconstructions", "step", "1") in images
    stored = Path(client.download_artifacts(run.info.run_id, "model.safetensors", str(runs["tmp"])))
    assert stored.read_bytes() == (folder / "ml" / "model.safetensors").read_bytes()
    assert str((folder / "mlartifacts").resolve()) in run.info.artifact_uri  # next to the store, not in the cwd


def test_a_third_party_logger_a_raising_one_and_the_tensorboard_alias(runs: dict) -> None:
    result, out = runs["tracked"], runs["tmp"] / "tracked"
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "vaezoo: warning" in line]
    assert warnings == [
        "vaezoo: warning: logger 'flaky' failed in log_metrics (RuntimeError: the tracking server went away); "
        "it is dropped, the run goes on"
    ]
    assert "logger recorder: recording into recorder.jsonl" in result.stderr  # spelled short: no other has it
    assert [line["epoch"] for line in metrics(out)] == [1, 2]  # the run went on and wrote its model
    assert vaezoo.load(out / "model.safetensors").metadata["training"]["epochs"] == 2
    calls = [json.loads(line) for line in (out / "recorder.jsonl").read_text().splitlines()]
    lines = metrics(out)
    assert calls[0] == ["t", "start", 0, "cifar-vae", "cpu"]
    assert calls[1] == ["t", "log_metrics", 1, lines[0]["test_loss"]]
    assert calls[2][:3] == ["t", "log_images", 1]
    assert set(calls[2][3]) == {"samples", "reconstructions", "interpolations"}
    assert all(shape[-1] == 3 and dtype == "uint8" for shape, dtype in calls[2][3].values())  # HWC pictures
    assert calls[3] == ["t", "log_metrics", 2, lines[1]["test_loss"]] and calls[-1] == ["t", "finish", "finished"]
    recipe = (out / "recipe.toml").read_text()
    assert 'loggers = [{ name = "recorder", tag = "t" }, { name = "flaky" }, { name = "tensorboard" }]' in recipe
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # --tensorboard: the logger of that name


def test_a_run_that_fails_tells_its_loggers(runs: dict) -> None:
    result = runs["failed"]
    assert result.returncode == 1 and "training diverged" in result.stderr
    calls = [json.loads(line) for line in (runs["tmp"] / "failed" / "recorder.jsonl").read_text().splitlines()]
    assert calls[0][1] == "start" and calls[-1] == ["t", "finish", "failed"]


def test_an_unknown_logger_or_a_missing_package_is_one_line_before_anything_is_written(runs: dict) -> None:
    for key, words in (
        ("refused", "unknown logger 'nope'"),
        ("needy", "logger 'needy' (vaezoo-tracker) cannot start: No module named 'vaezoo_tracker_nothere'"),
    ):
        result = runs[key]
        assert result.returncode == 2, result.stderr
        [line] = error_lines(result.stderr)
        assert words in line and "Traceback" not in result.stderr
        assert not (runs["tmp"] / key).exists()


def test_a_missing_tensorboard_or_mlflow_package_is_one_line_with_the_extra_to_install(
    cifar: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow"
    for package in ("tensorboard", "mlflow"):
        (shadow / package).mkdir(parents=True)
        missing = f"raise ModuleNotFoundError('no {package} here', name='{package}')\n"
        (shadow / package / "__init__.py").write_text(missing)
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    commands = [
        ["run", "cifar-vae", *SMALL, "--epochs", "1", "--logger", package, "--out", str(tmp_path / package)]
        for package in ("tensorboard", "mlflow")
    ]
    for package, result in zip(("tensorboard", "mlflow"), run_cli_batch(commands, tmp_path, env={"PYTHONPATH": path})):
        assert result.returncode == 2, result.stderr
        [line] = error_lines(result.stderr)
        assert f"logger '{package}' needs the {package} package: pip install 'vaezoo[{package}]'" in line
        assert not (tmp_path / package).exists()


def test_train_loggers_are_checked_and_spelled_in_the_recipe() -> None:
    resolved = vaezoo.resolve_recipe("cifar-vae", ['train.loggers="vaezoo:mlflow"'])
    assert resolved["train"]["loggers"] == [{"name": "mlflow", "experiment": "", "log_model": True}]
    assert vaezoo.resolve_recipe("cifar-vae")["train"]["loggers"] == []
    for sets, error, words in (
        (['train.loggers=[{name="mlflow", nope=1}]'], RecipeError, "unknown key train.loggers.nope"),
        (['train.loggers=["tensorboard", "vaezoo:tensorboard"]'], RecipeError, "'tensorboard' twice"),
        (['train.loggers=["wandb"]'], UnknownName, "unknown logger 'wandb'"),
        (["train.loggers=3"], RecipeError, "train.loggers must be list"),
    ):
        with pytest.raises(error, match=words):
            vaezoo.resolve_recipe("cifar-vae", sets)


def test_a_model_file_names_loggers_that_are_not_installed_and_still_loads() -> None:
    """A model file records train.loggers; loading it needs none of them (a run builds them, loading does not)."""
    table = vaezoo.resolve_recipe("cifar-vae")
    table["train"]["loggers"] = [{"name": "vaezoo-wandb:wandb", "project": "p"}, {"name": "tensorboard"}]
    loaded = validate("cifar-vae", table, need_dataset=False)
    assert loaded["train"]["loggers"] == table["train"]["loggers"]
    with pytest.raises(UnknownName, match="wandb"):
        validate("cifar-vae", table)


def test_an_interrupted_run_tells_each_logger_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C: the loop tells the loggers "interrupted", then the Interrupted error reaches fit(), which tells
    those that did not hear of the end yet (none here); a logger that raised hears nothing more."""
    from types import SimpleNamespace

    from vaezoo.errors import Interrupted
    from vaezoo.trainer.loggers import Loggers

    heard: list[tuple] = []

    class Heard(vaezoo.Logger):
        def start(self, run):
            heard.append(("start", run.epoch))

        def finish(self, status):
            heard.append(("finish", status))

    class Broken(vaezoo.Logger):
        def start(self, run):
            raise OSError("disk full")

        def finish(self, status):
            heard.append(("broken finish", status))

    fp32 = SimpleNamespace(name="fp32")
    run = SimpleNamespace(out_dir=tmp_path, recipe={"name": "r"}, epoch=2, history=[], device="cpu", precision=fp32)
    loggers = Loggers({"heard": Heard(), "broken": Broken()})
    loggers.on_start(run)
    loggers.on_interrupt(run, None)
    loggers.ended_by(Interrupted("stopped", out_dir=tmp_path, recipe="r", epochs=3))
    assert heard == [("start", 2), ("finish", "interrupted")]
    assert "logger 'broken' failed in start (OSError: disk full); it is dropped" in capsys.readouterr().err


def test_a_resume_whose_recipe_names_a_logger_not_installed_says_so_and_blames_no_file(
    small_run: Path, tmp_path: Path
) -> None:
    """The run's recipe.toml names a logger whose plugin is missing here: the resume is refused in one
    line that says what is not installed (not that the file is damaged), and the folder is unchanged."""
    import shutil

    import vaezoo
    from vaezoo.errors import RecipeError

    run = shutil.copytree(small_run, tmp_path / "run")
    recipe = run / "recipe.toml"
    text = recipe.read_text()
    assert "loggers = []" in text
    recipe.write_text(text.replace("loggers = []", 'loggers = [{ name = "gone-dist:gone" }]'))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RecipeError, match="names what is not installed here") as refused:
        vaezoo.fit("cifar-vae", resume=run, options={"train.epochs": 2}, device="cpu")
    assert "damaged" not in str(refused.value) and "\n" not in str(refused.value)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
