"""Training guards: a run that diverges at its last step never overwrites the last good model, a recipe
file never chooses where a run is written, sizes a recipe, a setting or an image sets are bounded before
anything is allocated, and families whose forward, pictures or objective lie are one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import Command, run_cli, run_cli_batch
from tinydata import TINY_ARGS, TWO_EPOCHS, error_lines, one_line, rewrite, set_key, tiny_cifar, training_process  # noqa: F401 (a fixture)

ONE_STEP = [
    "--limit",
    "16",
    "--set",
    "train.test_limit=32",
    "--device",
    "cpu",
    "--seed",
    "1",
    *TINY_ARGS,
]  # batch 16: one step per epoch


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != ".vaezoo.lock"
    }


def test_a_last_step_that_diverges_never_overwrites_the_good_model(cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        run_cli("run", "cifar-vae", "--epochs", "1", *ONE_STEP, "--data-dir", str(cifar), "--out", str(out)).returncode
        == 0
    )
    before = digests(out)
    # the epoch's only step is the one that diverges: its loss (computed before the update) is finite
    line = one_line(
        run_cli("run", "cifar-vae", "--resume", str(out), "--epochs", "2", "--lr", "1e30", "--data-dir", str(cifar)),
        code=1,
        progress=True,
    )
    assert "diverged" in line and "epoch 1" in line and str(out / "model.safetensors") in line
    assert digests(out) == before  # model, state, metrics (no NaN) and pictures untouched
    assert "NaN" not in (out / "metrics.jsonl").read_text()
    resumed = run_cli("run", "cifar-vae", "--resume", str(out), "--epochs", "2", "--data-dir", str(cifar))
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the good state still resumes


def test_non_finite_weights_or_buffers_are_named_and_refused() -> None:
    from types import SimpleNamespace

    import torch

    from vaezoo.errors import RunFailed
    from vaezoo.trainer.loop import _check_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    run = SimpleNamespace(model=model, out_dir=Path("run"), epoch=1, state=SimpleNamespace(batch=3))
    _check_weights(run)  # finite: nothing to say
    with torch.no_grad():
        model[1].running_var[1] = float("inf")  # a buffer, not a parameter
    with pytest.raises(RunFailed, match=r"weights became non-finite \(1.running_var\) in epoch 2, batch 3"):
        _check_weights(run)


LEARNING_RATES = ["inf", "nan", "-1"]
SIZES = [
    (["train.sample_count=10001"], "train.sample_count must be at most 10000"),
    (["latent_dim=1000000000000"], "latent_dim must be an integer from 1 to 65536"),
    (['prior={name="vamp", n_pseudo=1000000000}'], "vamp needs n_pseudo from 1 to 10000"),
    (['prior={name="mog", n_components=1000000000000}'], "mog needs n_components from 1 to 10000"),
    (['loss={name="dlogistic-kl", n_mix=1000000000}'], "dlogistic-kl needs n_mix from 1 to 256"),
]


@pytest.fixture(scope="module")
def refused_settings(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """A run with each of LEARNING_RATES (key: the rate) and SIZES (key: its first --set) -> (its run
    folder, the run's result): the runs in one fresh process."""
    root = tmp_path_factory.mktemp("settings")
    changes = {lr: ["--lr", lr] for lr in LEARNING_RATES}
    changes.update({sets[0]: [arg for item in sets for arg in ("--set", item)] for sets, _ in SIZES})
    outs = {key: root / str(index) / "run" for index, key in enumerate(changes)}
    commands = [
        ["run", "cifar-vae", "--epochs", "1", *ONE_STEP, *args, "--data-dir", str(cifar), "--out", str(outs[key])]
        for key, args in changes.items()
    ]
    return {key: (outs[key], result) for key, result in zip(changes, run_cli_batch(commands, root))}


@pytest.mark.parametrize("lr", LEARNING_RATES)
def test_a_learning_rate_that_is_not_a_positive_number_is_refused(refused_settings: dict, lr: str) -> None:
    out, result = refused_settings[lr]
    line = one_line(result)
    assert "train.lr" in line or "Invalid value for '--lr'" in line, line  # NaN and infinities: the option's own check
    assert not (out / "recipe.toml").exists()


RECIPE_NAMES = [
    "/tmp/vaezoo-escape",
    "../../escape",
    "a/b",
    "evil\x1b]0;pwned\x07",
    "two\nlines",
    ".hidden",
    "x" * 101,
    "",
]


@pytest.fixture(scope="module")
def hostile_recipe_runs(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """RECIPE_NAMES item -> (its folder, its recipe file, `vaezoo run RECIPE-FILE` run in FOLDER/work, no
    --out): the runs in one fresh process."""
    root = tmp_path_factory.mktemp("recipe-names")
    runs, commands = {}, []
    for index, name in enumerate(RECIPE_NAMES):
        folder = root / str(index)
        (folder / "work").mkdir(parents=True)
        recipe = folder / "hostile.toml"
        escaped = (
            name.replace("\\", "\\\\")
            .replace("\n", "\\n")
            .replace("\x1b", "\\u001b")
            .replace("\x07", "\\u0007")
            .replace('"', '\\"')
        )
        recipe.write_text(
            f'name = "{escaped}"\ndataset = {{ name = "cifar10" }}\nencoder = {{ name = "conv" }}\n'
            'decoder = { name = "conv" }\nprior = { name = "normal" }\nloss = { name = "bce-kl" }\nlatent_dim = 4\n'
        )
        runs[name] = folder, recipe
        commands.append(
            Command("run", str(recipe), "--epochs", "1", *ONE_STEP, "--data-dir", str(cifar), cwd=folder / "work")
        )
    return {name: (*runs[name], result) for name, result in zip(RECIPE_NAMES, run_cli_batch(commands, root))}


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_a_recipe_file_never_chooses_where_a_run_is_written(hostile_recipe_runs: dict, name: str) -> None:
    folder, recipe, result = hostile_recipe_runs[name]
    line = one_line(result)
    assert "is not a recipe name" in line and str(recipe) in line
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert (
        list((folder / "work").iterdir()) == []
        and not Path("/tmp/vaezoo-escape").exists()
        and not (folder.parent / "escape").exists()
    )


@pytest.mark.parametrize(("sets", "expected"), SIZES)
def test_sizes_a_recipe_sets_are_bounded(refused_settings: dict, sets: list[str], expected: str) -> None:
    out, result = refused_settings[sets[0]]
    assert expected in one_line(result)
    assert not (out / "recipe.toml").exists()


def test_a_closed_terminal_sighup_saves_the_state_like_sigterm(cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = training_process(cifar, out)
    process.send_signal(signal.SIGHUP)
    code, err = process.wait(timeout=120), process.stderr.read()
    lines = [line for line in error_lines(err) if line.startswith("vaezoo:")]
    assert code == 130 and len(lines) == 1 and "stopped by SIGHUP" in lines[0], err[-2000:]
    assert (out / "state.safetensors").exists() and not (out / ".vaezoo.lock").exists()
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert (
        run_cli(
            "run", "cifar-vae", "--resume", str(out), "--epochs", str(done + 1), "--data-dir", str(cifar)
        ).returncode
        == 0
    )


def test_an_interpolation_grid_is_bounded_like_a_sample_grid(small_model: Path, tmp_path: Path) -> None:
    line = one_line(
        run_cli("interpolate", str(small_model), "-n", "1000", "--steps", "100", "--out", str(tmp_path / "i.png"))
    )
    assert "at most 10000" in line and not (tmp_path / "i.png").exists()


# A family that breaks the Model contract on purpose: `lie` says where.
LIAR_PLUGIN = '''
import torch
from torch import nn
import vaezoo


class Liar(vaezoo.Model):
    def __init__(self, *, in_shape, num_classes=0, lie="nothing"):
        super().__init__()
        self.lie, self.shape = lie, tuple(in_shape)
        self.level = nn.Parameter(torch.zeros(1))

    def forward(self, x, y=None, step=None):
        loss = (x.flatten(1) - self.level.sigmoid()).pow(2).sum(1)
        return loss if self.lie == "forward" else vaezoo.LossParts(loss, loss, torch.zeros_like(loss))

    def sample(self, n, y=None, temperature=1.0):
        return [0.5] * n if self.lie == "sample" else self.level.sigmoid().expand(n, *self.shape).clone()

    def reconstruct(self, x, y=None):
        return x.mean(1) if self.lie == "reconstruct" else self.level.sigmoid().expand_as(x).clone()


class Honest(Liar):
    """Not an ELBO: its own objective and a penalty."""

    objective, regularizer = "honest", "penalty"


class Hog(Liar):
    """A family whose constructor allocates `megabytes` of weights."""

    def __init__(self, *, in_shape, num_classes=0, megabytes=3200):
        super().__init__(in_shape=in_shape, num_classes=num_classes)
        self.ballast = nn.Parameter(torch.zeros(megabytes * 2**18))


@vaezoo.hookimpl
def register_models(register):
    register("liar", Liar)
    register("honest", Honest)
    register("hog", Hog)
'''


@pytest.fixture(scope="module")
def liar_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("liar")
    (root / "liar_plugin.py").write_text(LIAR_PLUGIN)
    info = root / "liar_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: liar-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\nliar = liar_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


LIAR_RUN = [
    "--epochs",
    "1",
    "--limit",
    "16",
    "--set",
    "train.test_limit=16",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.sample_count=4",
    "--device",
    "cpu",
]


def liar_recipe(tmp_path: Path, lie: str, family: str = "liar") -> Path:
    recipe = tmp_path / f"{family}-{lie}.toml"
    recipe.write_text(
        f'name = "{family}-{lie}"\ndataset = {{ name = "cifar10" }}\nmodel = {{ name = "{family}", lie = "{lie}" }}\n'
    )
    return recipe


def test_a_family_whose_forward_returns_the_wrong_type_is_one_line(
    cifar: Path, tmp_path: Path, liar_path: dict[str, str]
) -> None:
    result = run_cli(
        "run",
        str(liar_recipe(tmp_path, "forward")),
        *LIAR_RUN,
        "--data-dir",
        str(cifar),
        "--out",
        str(tmp_path / "run"),
        env=liar_path,
    )
    line = one_line(result, progress=True)
    assert "model family 'liar' (liar_plugin.Liar) broke its contract: forward returned a torch.float32 tensor" in line


# Caps the address space of a test's process at 2 GiB above what it holds once torch is imported.
MEMORY_LIMIT = """
import resource, torch, torch._dynamo
_held = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (_held + 2 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


def test_what_a_setting_or_an_image_makes_vaezoo_allocate_is_bounded(
    tiny_cifar: Path, tmp_path: Path, liar_path: dict[str, str]
) -> None:
    """Under a memory limit, a family constructor that allocates 3.2 GB is one line
    naming its setting (exit 2), and an image of 1 x 4,000,000 pixels decodes to its 32 x 32 centre in
    `run` and `eval --set dataset.path` (it took 12 GB on its way)."""
    from PIL import Image

    wide = tmp_path / "wide"
    shutil.copytree(tiny_cifar, wide)
    for split in ("train", "test"):
        Image.new("RGB", (4_000_000, 1), (200, 30, 30)).save(wide / split / "airplane" / "wide.png")
    hog = tmp_path / "hog.toml"
    hog.write_text('name = "hog"\ndataset = { name = "cifar10" }\nmodel = { name = "hog", megabytes = 3200 }\n')
    model = tmp_path / "wide-run" / "model.safetensors"
    (tmp_path / "empty").mkdir(exist_ok=True)  # a --data-dir must exist (vaezoo never creates it)
    hogged, trained, evaluated = run_cli_batch(  # one fresh process
        [
            ["run", str(hog), *LIAR_RUN, "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "hog")],
            ["run", "folder-vae", "--epochs", "1", *TINY_ARGS, "--set", f"dataset.path={wide}"]
            + ["--device", "cpu", "--data-dir", str(tmp_path / "empty"), "--out", str(model.parent)],
            ["eval", str(model), "--set", f"dataset.path={wide}", "--json"],
        ],
        tmp_path,
        env=liar_path,
        prelude=MEMORY_LIMIT,
    )
    line = one_line(hogged)
    assert "cannot build model 'hog': out of memory" in line and "model.megabytes=3200" in line, line
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["images"] == 21, evaluated.stderr[-2000:]


PICTURE_LIES = [("sample", "sample"), ("reconstruct", "eval")]


@pytest.fixture(scope="module")
def lying_pictures(
    cifar: Path, liar_path: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple]:
    """A liar that tells no lie, trained; its model file made to lie in each of PICTURE_LIES -> (the
    folder, the command reading it): the commands in one fresh process."""
    root = tmp_path_factory.mktemp("lying")
    result = run_cli(
        "run",
        str(liar_recipe(root, "nothing")),
        *LIAR_RUN,
        "--data-dir",
        str(cifar),
        "--out",
        str(root / "run"),
        env=liar_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    commands = []
    for lie, command in PICTURE_LIES:
        model = root / "run" / "model.safetensors"
        lying = rewrite(model, root / f"{lie}.safetensors", set_key(["vaezoo.recipe", "model", "lie"], lie))
        args = (
            ["-n", "2", "--out", str(root / "s.png")]
            if command == "sample"
            else ["--limit", "16", "--data-dir", str(cifar)]
        )
        commands.append([command, str(lying), *args])
    return {lie: (root, result) for (lie, _), result in zip(PICTURE_LIES, run_cli_batch(commands, root, env=liar_path))}


@pytest.mark.parametrize(("lie", "command"), PICTURE_LIES)
def test_a_family_whose_pictures_are_the_wrong_type_is_one_line(lying_pictures: dict, lie: str, command: str) -> None:
    root, result = lying_pictures[lie]
    assert result.args[0] == command
    line = one_line(result)
    assert f"model family 'liar' (liar_plugin.Liar) broke its contract: {lie} returned" in line
    assert not (root / "s.png").exists()


def test_a_recipe_file_nested_too_deeply_is_one_line(cifar: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "deep.toml"
    recipe.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in one_line(
        run_cli("run", str(recipe), "--data-dir", str(cifar), "--out", str(tmp_path / "run"))
    )


def test_a_family_that_is_not_an_elbo_is_never_called_one(
    cifar: Path, tmp_path: Path, liar_path: dict[str, str]
) -> None:
    """Metrics, eval, inspect and the card name the family's own objective and regularizer."""
    out = tmp_path / "run"
    result = run_cli(
        "run",
        str(liar_recipe(tmp_path, "nothing", "honest")),
        *LIAR_RUN,
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
        env=liar_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "test_penalty" in metrics and "test_kl" not in metrics and "test_bits_per_dim" not in metrics
    model = str(out / "model.safetensors")
    wide = {"COLUMNS": "250"}
    evaluated, tabled, inspected, carded = run_cli_batch(  # one fresh process
        [
            ["eval", model, "--iw-samples", "2", "--data-dir", str(cifar), "--limit", "16", "--json"],
            Command("eval", model, "--data-dir", str(cifar), "--limit", "16", env=wide),
            Command("inspect", model, env=wide),
            ["card", model],
        ],
        tmp_path,
        env=liar_path,
    )
    report = json.loads(evaluated.stdout)
    assert report["objective"] == "honest" and "penalty" in report and "kl" not in report
    assert (
        report["bits_per_dim"] is None
        and report["iw_nll"] is None
        and "not a negative ELBO" in report["bits_per_dim_note"]
    )
    table = " ".join(tabled.stdout.split())
    assert "loss (honest objective)" in table and "ELBO" not in table.replace("not a negative ELBO", "")
    inspected = " ".join(inspected.stdout.split())
    assert "objective: honest (not a variational bound)" in inspected and "tested on 16 images" in inspected
    card = carded.stdout
    for word in (
        "neg-elbo",
        "ELBO",
        "variational autoencoder",
        "variational-autoencoder",
        "--iw-samples",
        "bits",
        "KL",
    ):
        assert word not in card.replace("not a variational bound", ""), word
    assert (
        "Test honest objective" in card
        and "Test penalty term" in card
        and "(16 test images, a subset (train.test_limit))" in card
    )


def test_eval_is_told_the_folder_of_a_path_key_explicitly(tiny_cifar: Path, tmp_path: Path) -> None:
    """A model trained with --set dataset.path=... is evaluated with the same --set (the file
    never chooses the folder); other dataset keys cannot be changed that way."""
    out = tmp_path / "run"
    tiny = [
        "--set",
        "encoder.hidden=[4,8,8]",
        "--set",
        "decoder.hidden=[8,8,4]",
        "--set",
        "latent_dim=4",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.sample_count=4",
    ]
    (tmp_path / "empty").mkdir(exist_ok=True)  # a --data-dir must exist (vaezoo never creates it)
    trained = run_cli(
        "run",
        "folder-vae",
        "--epochs",
        "1",
        "--device",
        "cpu",
        *tiny,
        "--set",
        f"dataset.path={tiny_cifar}",
        "--data-dir",
        str(tmp_path / "empty"),
        "--out",
        str(out),
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    model = str(out / "model.safetensors")
    report, other_key, not_dataset = run_cli_batch(  # one fresh process
        [
            ["eval", model, "--set", f"dataset.path={tiny_cifar}", "--data-dir", str(tmp_path / "empty"), "--json"],
            ["eval", model, "--set", "dataset.size=64", "--set", f"dataset.path={tiny_cifar}"],
            ["eval", model, "--set", "train.lr=1"],
        ],
        tmp_path,
    )
    assert report.returncode == 0 and json.loads(report.stdout)["images"] == 20, report.stderr[-2000:]
    assert "only the dataset's folder keys" in one_line(other_key)
    assert "eval takes only the dataset's folder keys" in one_line(not_dataset)


def test_sample_needs_no_dataset_plugin_and_eval_names_it(small_model: Path, tmp_path: Path) -> None:
    without = {"VAEZOO_DISABLE_PLUGINS": "cifar10"}
    sampled, evaluated = run_cli_batch(  # one fresh process
        [
            ["sample", str(small_model), "-n", "4", "--out", str(tmp_path / "s.png")],
            ["eval", str(small_model), "--limit", "8"],
        ],
        tmp_path,
        env=without,
    )
    assert sampled.returncode == 0 and (tmp_path / "s.png").is_file(), sampled.stderr[-2000:]
    line = one_line(evaluated)
    assert "needs dataset 'cifar10'" in line and "VAEZOO_DISABLE_PLUGINS" in line
