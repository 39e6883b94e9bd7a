"""A family's contract and a file's labels: a file's labels are checked against its family, a
regularizer never takes one of eval's own names, recipes nested too deeply and families that break their
contract in the epoch-end pictures are one line, float options refuse NaN and infinities, and the minor
ones: inspect names an invalid distribution, `card --repo` is an ORG/NAME, `--device ''` is refused, a
missing `--data-dir` is never created. Model files are forged from a copy of conftest's small model;
CLI cases run in one process per test (run_cli_batch)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Command, run_cli_batch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tinydata import error_lines, one_line, tiny_cifar  # noqa: F401 - a fixture


def forge(source: Path, target: Path, change: Callable[[dict], None]) -> Path:
    """A copy of a model file whose decoded `vaezoo.*` metadata went through `change` (which may delete
    keys), written with safetensors."""
    with safe_open(str(source), "pt") as handle:
        raw = handle.metadata()
    metadata = {key: json.loads(value) for key, value in raw.items() if key.startswith("vaezoo.")}
    change(metadata)
    encoded = {"format": "pt", **{key: json.dumps(value) for key, value in metadata.items()}}
    save_file(load_file(str(source)), str(target), metadata=encoded)
    return target


def labelled(objective: dict | None) -> Callable[[dict], None]:
    def change(metadata: dict) -> None:
        metadata.pop("vaezoo.objective")
        if objective is not None:
            metadata["vaezoo.objective"] = objective

    return change


def ghost_family(metadata: dict) -> None:
    """The file names a family (and its distribution) that is not installed."""
    metadata["vaezoo.recipe"]["model"] = {"name": "ghost"}
    for record in metadata["vaezoo.components"]:
        if record["kind"] == "model":
            record.update(name="ghost", plugin="ghost", distribution="ghost-family")
    metadata["vaezoo.objective"] = {"objective": "ghostly", "regularizer": "kl"}


def test_a_files_objective_label_is_checked_against_its_family(small_model: Path, tmp_path: Path) -> None:
    """A label that disagrees with the installed family is flagged when the file loads, and the
    family's declaration is used; one
    that cannot be right (elbo with another regularizer, a reserved name, a 0.3 file without one,
    a label the metrics contradict) is refused by the schema, inspect and card too; inspect says the
    label is the file's, and where the family is not installed, that it is the file's claim."""
    forged = {
        "own": forge(small_model, tmp_path / "own.safetensors", labelled({"objective": "own", "regularizer": "kl"})),
        "elbo-mmd": forge(
            small_model, tmp_path / "em.safetensors", labelled({"objective": "elbo", "regularizer": "mmd"})
        ),
        "reserved": forge(
            small_model, tmp_path / "res.safetensors", labelled({"objective": "own", "regularizer": "loss"})
        ),
        "removed": forge(small_model, tmp_path / "removed.safetensors", labelled(None)),
        "metrics": forge(
            small_model, tmp_path / "metrics.safetensors", labelled({"objective": "wae-mmd", "regularizer": "mmd"})
        ),
        "ghost": forge(small_model, tmp_path / "ghost.safetensors", ghost_family),
    }
    out = str(tmp_path / "s.png")
    commands = [
        ["inspect", str(forged["own"])],
        ["sample", str(forged["own"]), "-n", "1", "--out", out],
        *(["inspect", str(forged[name])] for name in ("elbo-mmd", "reserved", "removed", "metrics")),
        ["card", str(forged["elbo-mmd"])],
        ["inspect", str(forged["ghost"])],
        ["card", str(forged["ghost"])],
        ["inspect", str(small_model)],
    ]
    own_inspect, own_sample, elbo_mmd, reserved, removed, metrics, card, ghost, ghost_card, honest = run_cli_batch(
        commands, tmp_path
    )
    own = " ".join(own_inspect.stdout.split())
    assert "objective: own (not a variational bound) (as the file records it; loading checks it" in own
    # the installed family's declaration wins, flagged in one line (a file of a 0.2 plugin, ported since)
    assert own_sample.returncode == 0 and Path(out).exists()
    assert "model family 'vae' installed here declares 'elbo' and 'kl': the family's declaration is used" in (
        own_sample.stderr
    )
    assert "'elbo' has the regularizer 'kl', not 'mmd'" in one_line(elbo_mmd)
    assert "regularizer 'loss' is not a short lower-case name other than" in one_line(reserved)
    assert "vaezoo.objective is missing (files of vaezoo 0.3 and later record it)" in one_line(removed)
    assert "has no test_mmd (the label and the metrics disagree)" in one_line(metrics)
    assert "'elbo' has the regularizer 'kl'" in one_line(card) and card.stdout == ""
    ghost = " ".join(ghost.stdout.split())
    assert ghost_card.returncode == 0 and ghost.count("objective: ghostly (not a variational bound)") == 1
    assert "(the file's claim: family 'ghost' is not installed here to check it)" in ghost
    assert "the **ghost** family was not installed where the card was written, so it was not checked" in " ".join(
        ghost_card.stdout.split()
    )
    assert honest.returncode == 0 and "objective: negative ELBO (as the file records it;" in " ".join(
        honest.stdout.split()
    )


def test_a_regularizer_never_takes_one_of_evals_names(small_model: Path, cifar: Path, tmp_path: Path) -> None:
    """Every field `eval --json` reports is reserved (a regularizer called `objective`
    overwrote eval's own), and a family declaring one is refused when it is built, as a file labelled
    with one is when it is read."""
    from vaezoo.errors import PluginError
    from vaezoo.recipes.build import _check_declarations
    from vaezoo.recipes.resolve import RESERVED_REPORT_NAMES

    evaluated, *labelled_files = run_cli_batch(
        [
            ["eval", str(small_model), "--data-dir", str(cifar), "--limit", "8", "--iw-samples", "1", "--json"],
            *(
                [
                    "inspect",
                    str(
                        forge(
                            small_model,
                            tmp_path / f"{name}.safetensors",
                            labelled({"objective": "own", "regularizer": name}),
                        )
                    ),
                ]
                for name in ("objective", "images", "model", "psnr_db", "iw_nll")
            ),
        ],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout)
    assert set(report) - {"kl"} <= RESERVED_REPORT_NAMES, set(report) - RESERVED_REPORT_NAMES
    for result in labelled_files:
        assert "is not a short lower-case name other than" in one_line(result)

    class Family:
        objective, regularizer = "own", "psnr_db"

    with pytest.raises(PluginError, match="model family 'x': regularizer 'psnr_db' is not"):
        _check_declarations(Family(), "x", None, {})


# Families that break their contract at the end of an epoch, and one that keeps it (with a term that
# shares the regularizer's name), registered by a real distribution on PYTHONPATH; and a recipe table
# nested 3000 deep.
FAMILIES = """
import torch
from torch import nn
import vaezoo


class Labelled(vaezoo.Model):
    def __init__(self, *, in_shape, num_classes=0, lie="nothing"):
        super().__init__()
        self.lie, self.shape = lie, tuple(in_shape)
        self.level = nn.Parameter(torch.zeros(1))

    def forward(self, x, y=None, step=None):
        loss = (x.flatten(1) - self.level.sigmoid()).pow(2).sum(1)
        terms = {"float-terms": {"half": 0.5}, "nothing": {"kl": loss / 2}}.get(self.lie, {})
        return vaezoo.LossParts(loss, loss, torch.zeros_like(loss), terms)

    def sample(self, n, y=None, temperature=1.0):
        images = self.level.sigmoid().expand(n, *self.shape).clone()
        return {"rank3-sample": images[:, 0], "int-sample": (images * 255).to(torch.uint8)}.get(self.lie, images)

    def reconstruct(self, x, y=None):
        return self.level.sigmoid().expand_as(x).clone()


class Reserved(Labelled):
    objective, regularizer = "own", "objective"


DEEP = {}
node = DEEP
for _ in range(3000):
    node["t"] = {}
    node = node["t"]


@vaezoo.hookimpl
def register_models(register):
    register("labelled", Labelled)
    register("reserved", Reserved)


@vaezoo.hookimpl
def register_recipes(register):
    register("deep-recipe", {"dataset": {"name": "cifar10"}, "model": {"name": "labelled", "lie": DEEP}})
"""

RUN = ["--epochs", "1", "--limit", "16", "--device", "cpu"]
RUN += [
    arg for item in ("train.test_limit=16", "train.batch_size=16", "train.sample_count=4") for arg in ("--set", item)
]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("labelled")
    (root / "labelled_plugin.py").write_text(FAMILIES)
    info = root / "labelled_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labelled-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\nlabelled = labelled_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_deep_recipes_and_broken_families_at_epoch_end_are_one_line(
    families: dict[str, str], tiny_cifar: Path, tmp_path: Path
) -> None:
    """A resume whose recipe.toml nests 3000 deep, a plugin's
    recipe table as deep, a family declaring a reserved regularizer, one whose terms hold floats, one
    whose sample is rank 3 or not float in the epoch-end pictures: one line each, no internal error.
    A family whose term shares the regularizer's name shows both in eval's table, told apart."""
    recipes = {}
    for family, lie in (("reserved", "nothing"), *(("labelled", lie) for lie in LIES), ("labelled", "nothing")):
        recipe = tmp_path / f"{family}-{lie}.toml"
        recipe.write_text(
            f'name = "{family}-{lie}"\ndataset = {{ name = "cifar10" }}\n'
            f'model = {{ name = "{family}", lie = "{lie}" }}\n'
        )
        recipes[family, lie] = recipe
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "recipe.toml").write_text('name = "cifar-vae"\nx = ' + "[" * 3000 + "]" * 3000 + "\n")
    data = ["--data-dir", str(tiny_cifar)]  # the families draw nothing from the images: a tiny CIFAR will do
    good = tmp_path / "good"
    results = run_cli_batch(
        [
            ["run", "cifar-vae", "--resume", str(deep), *data],
            ["run", "deep-recipe", *RUN, *data, "--out", str(tmp_path / "deep-out")],
            ["run", str(recipes["reserved", "nothing"]), *RUN, *data, "--out", str(tmp_path / "reserved")],
            *(["run", str(recipes["labelled", lie]), *RUN, *data, "--out", str(tmp_path / lie)] for lie in LIES),
            ["run", str(recipes["labelled", "nothing"]), *RUN, *data, "--out", str(good)],
            Command("eval", str(good / "model.safetensors"), *data, "--limit", "16", env={"COLUMNS": "200"}),
        ],
        tmp_path,
        env=families,
    )
    resumed, deep_plugin, reserved, *lied, trained, evaluated = results
    assert "recipe.toml is nested too deeply (more than 32 levels of tables and lists)" in one_line(resumed)
    assert "recipe 'deep-recipe' of plugin 'labelled' (labelled-plugin) is nested too deeply" in one_line(deep_plugin)
    assert "model family 'reserved': regularizer 'objective' is not a short lower-case name" in one_line(reserved)
    for lie, result in zip(LIES, lied):
        lines = error_lines(result.stderr)
        assert result.returncode == 2 and "internal error" not in result.stderr, (lie, result.stderr[-2000:])
        assert f"model family 'labelled' (labelled_plugin.Labelled) broke its contract: {LIES[lie]}" in lines[-1]
    assert trained.returncode == 0 and evaluated.returncode == 0, (trained.stderr[-2000:], evaluated.stderr)
    rows = [line.split()[0] for line in evaluated.stdout.splitlines() if line.strip()]
    assert "kl" in rows and "terms.kl" in rows and len(rows) == len(set(rows)), rows


LIES = {
    "float-terms": "forward's terms['half'] is a float, expected shape (16,)",
    "rank3-sample": "sample returned a torch.float32 tensor of shape (4, 32, 32)",
    "int-sample": "sample returned a torch.uint8 tensor of shape (4, 3, 32, 32)",
}


def test_options_and_names_are_refused_in_one_line(small_model: Path, cifar: Path, tmp_path: Path) -> None:
    """Float options refuse NaN and
    infinities; `card --repo` takes an ORG/NAME only; `--device ''` is refused, not `auto`; a missing
    `--data-dir` is one line and is not created; inspect names a component whose distribution name is
    not valid; usage lines say MODEL; a piped inspect keeps the sha256 on its line."""
    invalid = forge(small_model, tmp_path / "invalid.safetensors", _bad_distribution)
    missing = tmp_path / "no" / "data"
    out = tmp_path / "s.png"
    commands = [
        *(["sample", str(small_model), "--temperature", value, "--out", str(out)] for value in ("nan", "-nan")),
        *(["run", "cifar-vae", *RUN, "--lr", value, "--out", str(tmp_path / "r")] for value in ("nan", "inf", "-inf")),
        ["card", str(small_model), "--repo", "a/b/c"],
        ["card", str(small_model), "--repo", "a/b\x1b[2J"],
        ["sample", str(small_model), "--device", "", "--out", str(out)],
        ["run", "cifar-vae", *RUN[:4], "--device", "", "--out", str(tmp_path / "r")],
        ["run", "cifar-vae", *RUN, "--data-dir", str(missing), "--out", str(tmp_path / "r")],
        ["eval", str(small_model), "--data-dir", str(missing)],
        Command("inspect", str(invalid), env={"COLUMNS": None}),
        ["sample"],
        ["sample", "--help"],
    ]
    results = run_cli_batch(commands, tmp_path)
    temperatures, lrs = results[:2], results[2:5]
    deep_repo, esc_repo, sample_device, run_device, run_data, eval_data, inspected, no_model, helped = results[5:]
    for result in temperatures:
        assert "Invalid value for '--temperature': nan is not a finite number" in one_line(result)
    for result, value in zip(lrs, ("nan", "inf", "-inf")):
        assert f"Invalid value for '--lr': {value} is not a finite number" in one_line(result)
    assert not out.exists()
    assert "bad model name 'a/b/c': expected ORG/NAME" in one_line(deep_repo) and deep_repo.stdout == ""
    assert "bad model name 'a/b\\x1b[2J'" in one_line(esc_repo) and "\x1b" not in esc_repo.stdout + esc_repo.stderr
    for result in (sample_device, run_device):
        assert "--device is empty: use auto, cpu, cuda, cuda:N or mps" in one_line(result)
    for result in (run_data, eval_data):
        assert f"--data-dir {missing} does not exist" in one_line(result)
    assert not missing.parent.exists() and not (tmp_path / "r").exists()
    assert inspected.returncode == 0, inspected.stderr
    text = inspected.stdout
    assert "encoder 'conv': its distribution name 'not valid!' is not a valid distribution name" in text
    assert any(line.split()[-2:] == ["sha256", _sha256(invalid)] for line in text.splitlines()), text[:300]
    assert "Missing argument 'MODEL'" in one_line(no_model)
    assert "vaezoo sample [OPTIONS] {MODEL}" in helped.stdout and "{model}" not in helped.stdout


def _bad_distribution(metadata: dict) -> None:
    for record in metadata["vaezoo.components"]:
        if record["kind"] == "encoder":
            record["distribution"] = "not valid!"
    metadata["vaezoo.recipe"]["summary"] = "x" * 200  # a long line before it: nothing is wrapped


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
