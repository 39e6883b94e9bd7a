"""The plugin API's version and its migration path, and families that lie about
their training: a plugin's VAEZOO_PLUGIN_API requirement that this vaezoo does not
meet is one line and the other plugins work; a plugin written for vaezoo 0.2 trains with one
deprecation warning per declaration it lacks; a family whose parameter_groups, update() losses or
training_step break the contract is one line naming it (exit 2), never an internal error or a run
that trains nothing. Plugins are installed for real: distributions with entry points on PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_cli_batch
from tinydata import error_lines, one_line, tiny_cifar  # noqa: F401 (a fixture)

import vaezoo
from vaezoo.plugins.api_version import PLUGIN_API, requirement_problem
from vaezoo.testing import check_model

OLD_MODEL = REPO / "tests" / "fixtures" / "vaezoo-0.1-cifar-vae-tiny.safetensors"
PLUGIN02 = REPO / "tests" / "fixtures" / "plugin02"  # vaezoo_old02: a plugin written for vaezoo 0.2
TINY_RUN = ["--epochs", "1", "--limit", "64", "--set", "train.test_limit=32", "--device", "cpu"]
TINY_RUN += ["--precision", "fp32", "--set", "train.batch_size=16", "--set", "train.sample_count=4"]


def on_path(*roots: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([*map(str, roots), os.environ.get("PYTHONPATH", "")])}


def install(root: Path, distribution: str, modules: dict[str, str]) -> Path:
    """A distribution DISTRIBUTION 0.1 in `root` whose `vaezoo` entry point NAME is module NAME with the
    given source."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\n" + "".join(f"{name} = {name}\n" for name in modules))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def deprecations(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in error_lines(result.stderr) if line.startswith("vaezoo: warning: deprecated:")]


# ---- the requirement ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "api", "met"),
    [
        (">=1,<2", "1.0", True),
        (">=1,<2", "2.0", False),
        (">=1.1", "1.0", False),
        ("~=1.0", "1.3", True),
        ("~=1.0", "2.0", False),
        ("==1.*", "1.7", True),
        ("!=1.*", "1.7", False),
        (" >= 1 , < 2 ", "1.0", True),
        ("==1", "1.0", True),
    ],
)
def test_a_requirement_is_met_by_the_versions_it_names(requirement: str, api: str, met: bool) -> None:
    assert (requirement_problem(requirement, api) is None) == met


@pytest.mark.parametrize("requirement", ["banana", ">=1;<2", "1", ">=1.*", "", ">=1," * 40, 2, None, [">=1"]])
def test_a_requirement_vaezoo_cannot_read_is_a_reason_not_an_error(requirement: object) -> None:
    problem = requirement_problem(requirement)
    assert problem and "VAEZOO_PLUGIN_API" in problem and "\n" not in problem


FUTURE = "import vaezoo\nVAEZOO_PLUGIN_API = '>=2,<3'\n\n@vaezoo.hookimpl\ndef register_encoders(register):\n"
FUTURE += "    register('future-enc', 'x:Y')\n"
CURRENT = FUTURE.replace(">=2,<3", ">=1,<2").replace("future-enc", "current-enc")


@pytest.fixture(scope="module")
def requirements(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """`plugins`, `plugins --json`, `list encoders --json` and `sample` of a model file (in one process)
    beside plugins whose requirement this vaezoo does not meet (`future`, `garbled`) or meets (`current`)."""
    root = tmp_path_factory.mktemp("requirements")
    plugins = {"future": FUTURE, "garbled": CURRENT.replace("'>=1,<2'", "2"), "current": CURRENT}
    env = on_path(install(root / "site", "api-plugins", plugins))
    sample = ["sample", str(OLD_MODEL), "-n", "2", "--out", str(root / "s.png")]
    commands = [["plugins"], ["plugins", "--json"], ["list", "encoders", "--json"], sample]
    names = ["plugins", "plugins --json", "list encoders --json", "sample"]
    return dict(zip(names, run_cli_batch(commands, root, env=env)))


def test_an_unmet_requirement_is_one_line_and_the_other_plugins_work(requirements: dict) -> None:
    for command, result in requirements.items():
        assert result.returncode == 0, (command, result.stderr[-2000:])
        warnings = [line for line in error_lines(result.stderr) if line.startswith("vaezoo:")]
        assert len(warnings) == 2, (command, result.stderr)  # future and garbled, one line each
        (future,) = [line for line in warnings if "plugin 'future' (api-plugins) failed" in line]
        assert f"needs plugin API >=2,<3, and vaezoo {vaezoo.__version__} has plugin API {PLUGIN_API}" in future
        assert "install a release of api-plugins written for plugin API 1.x" in future
        (garbled,) = [line for line in warnings if "plugin 'garbled' (api-plugins) failed" in line]
        assert "VAEZOO_PLUGIN_API = 2 is not a requirement" in garbled
    encoders = {row["name"] for row in json.loads(requirements["list encoders --json"].stdout)}
    assert "current-enc" in encoders and "conv" in encoders and "future-enc" not in encoders
    assert Path(requirements["sample"].args[-1]).is_file()  # a model file still samples


def test_vaezoo_plugins_shows_each_requirement_and_whether_it_is_met(requirements: dict) -> None:
    rows = {row["name"]: row for row in json.loads(requirements["plugins --json"].stdout)}
    assert (rows["future"]["requires_plugin_api"], rows["future"]["plugin_api_met"]) == (">=2,<3", False)
    assert rows["future"]["status"] == "failed" and not any(rows["future"]["registers"].values())
    assert (rows["garbled"]["requires_plugin_api"], rows["garbled"]["plugin_api_met"]) == ("2", False)
    assert (rows["current"]["requires_plugin_api"], rows["current"]["plugin_api_met"]) == (">=1,<2", True)
    assert rows["current"]["status"] == "ok" and rows["current"]["encoders"] == ["current-enc"]
    assert (rows["vae"]["requires_plugin_api"], rows["vae"]["plugin_api_met"]) == (">=1,<2", True)  # the defaults
    table = requirements["plugins"].stdout
    assert f"plugin API {PLUGIN_API}" in table.splitlines()[0]
    assert any("future" in line and ">=2,<3 (NOT MET)" in line for line in table.splitlines())
    assert any("current" in line and ">=1,<2 (met)" in line for line in table.splitlines())


# ---- a plugin written for vaezoo 0.2 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs02(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """One tiny epoch of each family of the 0.2 plugin, then `plugins --json` (in one process)."""
    root = tmp_path_factory.mktemp("plugin02")
    commands = []
    for family in ("wae02", "aae02"):
        recipe = root / f"{family}.toml"
        recipe.write_text(
            f'name = "{family}-cifar"\nlatent_dim = 4\ndataset = {{ name = "cifar10" }}\n'
            f'model = {{ name = "{family}", width = 16 }}\n'
        )
        commands.append(["run", str(recipe), *TINY_RUN, "--data-dir", str(cifar), "--out", str(root / family)])
    results = run_cli_batch([*commands, ["plugins", "--json"]], root, env=on_path(PLUGIN02))
    return {"root": root, **dict(zip(("wae02", "aae02", "plugins"), results))}


@pytest.mark.parametrize(("family", "missing"), [("wae02", ["objective"]), ("aae02", ["objective", "optimizers"])])
def test_a_02_family_trains_with_one_deprecation_line_per_missing_declaration(
    runs02: dict, family: str, missing: list[str]
) -> None:
    result = runs02[family]
    assert result.returncode == 0, result.stderr[-3000:]
    lines = deprecations(result)
    assert len(lines) == len(missing), result.stderr
    for line, declaration in zip(lines, missing):
        assert f"model family {family!r} (plugin 'old02', vaezoo-old02 0.1) declares no {declaration}:" in line
        assert "VAEZOO_PLUGIN_API = '>=1,<2'" in line and "Porting a 0.2 plugin" in line
    if "optimizers" in missing:
        assert "its own optimizer (critic_optimizer) is stepped inside forward" in lines[1]
    metrics = [json.loads(row) for row in (runs02["root"] / family / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in metrics] == [1] and metrics[0]["step"] == 4  # 64 images, batches of 16


def test_a_02_plugin_declares_no_requirement(runs02: dict) -> None:
    (row,) = [row for row in json.loads(runs02["plugins"].stdout) if row["name"] == "old02"]
    assert row["status"] == "ok" and row["models"] == ["aae02", "wae02"]
    assert row["requires_plugin_api"] is None and row["plugin_api_met"] is None


def test_check_model_says_what_became_stricter_for_a_02_family_with_its_own_optimizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN02))
    from vaezoo_old02 import AAE02, WAE02

    check_model(WAE02, latent_dim=4, width=8)  # nothing of the 0.3 contract breaks without an optimizer of its own
    with pytest.raises(AssertionError) as caught:
        check_model(AAE02, latent_dim=4, width=8)
    message = str(caught.value)
    assert "parameter critic." in message and "Stricter since vaezoo 0.3" in message
    assert "parameter_groups()" in message and "update(name, per_image_loss)" in message
    from vaezoo_ported import PortedAAE  # ported as docs/plugins.md says

    assert set(check_model(PortedAAE, latent_dim=4, width=8).parameter_groups()) == {"model", "critic"}


# ---- families that lie about their training ----------------------------------------------------

LYING_PLUGIN = """
import torch
from torch import nn
import vaezoo
from vaezoo.components import ParamGroup

VAEZOO_PLUGIN_API = ">=1,<2"


class Lying(vaezoo.Model):
    objective = "elbo"

    def __init__(self, *, in_shape, lie="nothing"):
        super().__init__()
        self.lie, self.shape = lie, tuple(in_shape)
        self.level = nn.Parameter(torch.zeros(1))

    def forward(self, x, y=None, step=None):
        loss = (x.flatten(1) - self.level.sigmoid()).pow(2).sum(1)
        return vaezoo.LossParts(loss, loss, torch.zeros_like(loss))

    def parameter_groups(self):
        lies = {
            "no-optimizers": lambda: {},
            "empty-group": lambda: {"model": ParamGroup([])},
            "list": lambda: [ParamGroup([self.level])],
            "list-in-group": lambda: {"model": [self.level]},
            "betas": lambda: {"model": ParamGroup([self.level], betas=(1.5, 0.999))},
            "non-leaf": lambda: {"model": ParamGroup([self.level * 2])},
        }
        return lies.get(self.lie, super().parameter_groups)()

    def training_step(self, x, y, step, update):
        parts = self(x, y, step)
        if self.lie not in ("no-update", "no-optimizers"):
            update("model", parts.loss.mean() if self.lie == "scalar-loss" else parts.loss)
        return parts

    def sample(self, n, y=None, temperature=1.0):
        return self.level.sigmoid().expand(n, *self.shape).clone()

    def reconstruct(self, x, y=None):
        return self.level.sigmoid().expand_as(x).clone()


@vaezoo.hookimpl
def register_models(register):
    register("lying", Lying)
"""

# lie -> what its one line says after "model family 'lying' (lying_plugin.Lying) broke its contract: "
LIES = {
    "no-update": "its training_step called update() for none of its optimizers (model) in the first step",
    "no-optimizers": "parameter_groups() declared no optimizer, so nothing would train",
    "scalar-loss": "training_step gave update('model', ...) a torch.float32 tensor of shape (), expected the "
    "per-image loss, a float tensor of shape (16,)",
    "empty-group": "parameter_groups() gave 'model' no trainable parameter",
    "list": "parameter_groups() returned a list, expected a dict of optimizer name -> vaezoo.components.ParamGroup",
    "list-in-group": "parameter_groups() gave 'model' a list, expected ParamGroup(",
    "betas": "parameter_groups() gave 'model' betas (1.5, 0.999): Adam's betas are two numbers in [0, 1)",
    "non-leaf": "parameter_groups() gave 'model' a torch.float32 tensor of shape (1,) that is not a leaf",
}


@pytest.fixture(scope="module")
def lying_runs(tiny_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """A tiny run of the family telling each lie of LIES (in one process), on the tiny CIFAR lookalike: each
    lie stops the run before or at its first step, and CIFAR-10's 60,000 files cost 3 s per run to stat."""
    root = tmp_path_factory.mktemp("lying")
    env = on_path(install(root / "site", "lying-plugin", {"lying_plugin": LYING_PLUGIN}))
    commands = []
    for lie in LIES:
        recipe = root / f"{lie}.toml"
        model = f'model = {{ name = "lying", lie = "{lie}" }}\n'
        recipe.write_text(f'name = "l"\ndataset = {{ name = "cifar10" }}\n{model}')
        commands.append(["run", str(recipe), *TINY_RUN, "--data-dir", str(tiny_cifar), "--out", str(root / lie)])
    return dict(zip(LIES, run_cli_batch(commands, root, env=env)))


@pytest.mark.parametrize("lie", LIES)
def test_a_family_that_lies_about_its_training_is_one_line_naming_it(lying_runs: dict, lie: str) -> None:
    line = one_line(lying_runs[lie], code=2, progress=True)
    assert line.startswith("vaezoo: error: model family 'lying' (lying_plugin.Lying) broke its contract: "), line
    assert LIES[lie] in line, line
