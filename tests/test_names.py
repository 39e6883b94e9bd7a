"""Qualified names and provenance (design doc 1b): a third-party distribution installed for
real (a dist-info folder with entry points on PYTHONPATH) whose names clash with the zoo's (a plugin
named `wae`, a family `iaf-vae`) never makes unrelated commands fail; its recipe uses its own family, the
zoo's recipes the zoo's; an ambiguous short name is one line listing the qualified names; recipes accept
qualified names; a model file rebuilds with the distributions it records, and one whose distribution is
missing exits 2 naming it."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import Command, run_cli_batch
from safetensors import safe_open
from tinydata import TINY_ARGS, error_lines

DISTRIBUTION = "vaezoo-clash"
CLASH = """
    '''A third-party plugin whose names clash with the zoo's: entry point `wae`, model family `iaf-vae`.'''

    import vaezoo


    def __getattr__(name):
        if name != "ClashIAF":
            raise AttributeError(name)
        from vaezoo_defaults.vae.model import VAE

        class ClashIAF(VAE):
            '''The clash plugin's iaf-vae: a classic VAE with a key of its own (flow_steps).'''

            def __init__(self, *, encoder, decoder, prior, loss, in_shape, latent_dim, flow_steps: int = 1):
                super().__init__(
                    encoder=encoder, decoder=decoder, prior=prior, loss=loss, in_shape=in_shape, latent_dim=latent_dim
                )
                self.flow_steps = flow_steps

        return ClashIAF


    @vaezoo.hookimpl
    def register_models(register):
        register("iaf-vae", "vaezoo_clash:ClashIAF", summary="The clash plugin's iaf-vae")


    @vaezoo.hookimpl
    def register_recipes(register):
        register(
            "clash-iaf",
            {
                "summary": "The clash plugin's iaf-vae on CIFAR-10",
                "latent_dim": 4,
                "model": {"name": "iaf-vae", "flow_steps": 2},
                "dataset": {"name": "cifar10"},
                "encoder": {"name": "conv", "hidden": [4, 8, 8]},
                "decoder": {"name": "conv", "hidden": [8, 8, 4]},
                "prior": {"name": "normal"},
                "loss": {"name": "bce-kl"},
            },
        )
"""
RECIPE = """
latent_dim = 4
model = {{ name = "{model}" }}
dataset = {{ name = "cifar10" }}
encoder = {{ name = "conv", hidden = [4, 8, 8] }}
decoder = {{ name = "conv", hidden = [8, 8, 4] }}
prior = {{ name = "normal" }}
loss = {{ name = "bce-kl" }}
"""
SMALL = ["--set", "train.limit=64", "--set", "train.test_limit=32", "--epochs", "1", "--device", "cpu"]
IAF_SMALL = ["--set", "model.hidden=[8]", "--set", "model.context_dim=4"]


def install_clash(root: Path) -> dict[str, str]:
    """The distribution `vaezoo-clash` 0.1 installed in `root` as pip installs one (a dist-info folder
    with METADATA and entry_points.txt, and the module); the environment that puts it on the path."""
    info = root / "vaezoo_clash-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[vaezoo]\nwae = vaezoo_clash\n", encoding="utf-8")
    (root / "vaezoo_clash.py").write_text(textwrap.dedent(CLASH), encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}


def records(model: Path) -> dict[str, str]:
    """kind -> `distribution:name` of a model file's component records."""
    with safe_open(model, "pt") as handle:
        components = json.loads(handle.metadata()["vaezoo.components"])
    return {record["kind"]: f"{record['distribution']}:{record['name']}" for record in components}


@pytest.fixture(scope="module")
def clash(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every command of the clash tests that runs with vaezoo-clash installed, in one process."""
    tmp = tmp_path_factory.mktemp("clash")
    env = {**install_clash(tmp / "site"), "VAEZOO_DATA_DIR": str(cifar)}
    (tmp / "ambiguous.toml").write_text(RECIPE.format(model="iaf-vae"), encoding="utf-8")
    (tmp / "qualified.toml").write_text(RECIPE.format(model=f"{DISTRIBUTION}:iaf-vae"), encoding="utf-8")
    commands = {
        "list": ["list", "--json"],
        "list models": ["list", "models"],
        "plugins": ["plugins"],
        "plugins json": ["plugins", "--json"],
        "cifar-vae": ["run", "cifar-vae", *TINY_ARGS, *SMALL, "--out", str(tmp / "vae")],
        "cifar-iaf-vae": ["run", "cifar-iaf-vae", *TINY_ARGS, *IAF_SMALL, *SMALL, "--out", str(tmp / "zoo-iaf")],
        "clash-iaf": ["run", "clash-iaf", *SMALL, "--out", str(tmp / "clash")],
        # as vaezoo 0.2 wrote it, before the zoo had an iaf-vae: the file's recipe says "iaf-vae"
        "clash-iaf alone": Command(
            "run", "clash-iaf", *SMALL, "--out", str(tmp / "alone"), env={"VAEZOO_DISABLE_PLUGINS": "vaezoo:iaf-vae"}
        ),
        "ambiguous": ["run", str(tmp / "ambiguous.toml"), *SMALL, "--out", str(tmp / "ambiguous")],
        # in a recipe file (no distribution registers it) --set is a short name like any other
        "ambiguous set": ["run", str(tmp / "qualified.toml"), "--set", "model.name=iaf-vae", "--out", str(tmp / "no")],
        "qualified": [
            "run",
            str(tmp / "qualified.toml"),
            "--set",
            "model.flow_steps=3",
            *SMALL,
            "--out",
            str(tmp / "q"),
        ],
        "sample zoo-iaf": [
            "sample",
            str(tmp / "zoo-iaf" / "model.safetensors"),
            "-n",
            "4",
            "--out",
            str(tmp / "z.png"),
        ],
        "sample clash": ["sample", str(tmp / "clash" / "model.safetensors"), "-n", "4", "--out", str(tmp / "c.png")],
        "zoo family off": Command(
            "run", "cifar-iaf-vae", *SMALL, "--out", str(tmp / "off"), env={"VAEZOO_DISABLE_PLUGINS": "vaezoo:iaf-vae"}
        ),
        "clash off": Command("plugins", "--json", env={"VAEZOO_DISABLE_PLUGINS": f"{DISTRIBUTION}:wae"}),
        "clash off sample": Command(
            "sample",
            str(tmp / "clash" / "model.safetensors"),
            "--out",
            str(tmp / "off.png"),
            env={"VAEZOO_DISABLE_PLUGINS": f"{DISTRIBUTION}:wae"},
        ),
    }
    commands["resume qualified"] = [  # last: it adds an epoch to the clash run
        "run",
        f"{DISTRIBUTION}:clash-iaf",
        "--resume",
        str(tmp / "clash"),
        "--epochs",
        "2",
        "--device",
        "cpu",
    ]
    results = run_cli_batch(list(commands.values()), tmp, env=env)
    return {"tmp": tmp, **dict(zip(commands, results))}


def test_a_plugin_whose_names_clash_lists_and_loads_beside_the_zoo(clash: dict) -> None:
    for key in ("list", "list models", "plugins", "plugins json"):
        assert clash[key].returncode == 0 and not error_lines(clash[key].stderr), (key, clash[key].stderr)
    families = {(i["qualified_name"], i["plugin"]) for i in json.loads(clash["list"].stdout) if i["kind"] == "model"}
    assert {("vaezoo:iaf-vae", "iaf-vae"), (f"{DISTRIBUTION}:iaf-vae", "wae"), ("vaezoo:wae", "wae")} <= families
    assert "vaezoo:iaf-vae" in clash["list models"].stdout and f"{DISTRIBUTION}:iaf-vae" in clash["list models"].stdout
    assert "vaezoo:vae " not in clash["list models"].stdout  # a name that does not clash stays short
    assert "vaezoo:wae" in clash["plugins"].stdout and f"{DISTRIBUTION}:wae" in clash["plugins"].stdout
    plugins = [
        (r["qualified_name"], r["status"]) for r in json.loads(clash["plugins json"].stdout) if r["name"] == "wae"
    ]
    assert plugins == [("vaezoo:wae", "ok"), (f"{DISTRIBUTION}:wae", "ok")]  # by name, then distribution


def test_each_recipe_uses_its_own_distributions_family(clash: dict) -> None:
    tmp = clash["tmp"]
    for key in ("cifar-vae", "cifar-iaf-vae", "clash-iaf", "sample zoo-iaf", "sample clash"):
        assert clash[key].returncode == 0, (key, clash[key].stderr[-3000:])
    assert records(tmp / "vae" / "model.safetensors")["model"] == "vaezoo:vae"
    assert records(tmp / "zoo-iaf" / "model.safetensors")["model"] == "vaezoo:iaf-vae"
    assert records(tmp / "clash" / "model.safetensors")["model"] == f"{DISTRIBUTION}:iaf-vae"
    # the resolved recipe names the family so that it is the same one without the recipe's context
    assert f'name = "{DISTRIBUTION}:iaf-vae"' in (tmp / "clash" / "recipe.toml").read_text(encoding="utf-8")
    resumed = clash["resume qualified"]  # a recipe's qualified name resumes its run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["epoch"] for line in (tmp / "clash" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_an_ambiguous_short_name_is_one_line_listing_the_qualified_names(clash: dict) -> None:
    for key in ("ambiguous", "ambiguous set"):
        result = clash[key]
        assert result.returncode == 2, (key, result.stderr[-3000:])
        (line,) = error_lines(result.stderr)
        assert "model 'iaf-vae' is ambiguous" in line and "Traceback" not in result.stderr
        assert f"{DISTRIBUTION}:iaf-vae" in line and "vaezoo:iaf-vae" in line
    assert not (clash["tmp"] / "ambiguous").exists()


def test_a_qualified_name_in_a_recipe_picks_that_distribution(clash: dict) -> None:
    assert clash["qualified"].returncode == 0, clash["qualified"].stderr[-3000:]
    model = clash["tmp"] / "q" / "model.safetensors"
    assert records(model)["model"] == f"{DISTRIBUTION}:iaf-vae"
    with safe_open(model, "pt") as handle:
        assert json.loads(handle.metadata()["vaezoo.recipe"])["model"]["flow_steps"] == 3


def test_a_zoo_recipe_never_swaps_in_another_distributions_family(clash: dict) -> None:
    result = clash["zoo family off"]
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert "model 'iaf-vae' of vaezoo is not available" in line and f"{DISTRIBUTION}:iaf-vae" in line
    assert not (clash["tmp"] / "off").exists()


def test_a_qualified_plugin_name_switches_off_one_of_two(clash: dict) -> None:
    rows = json.loads(clash["clash off"].stdout)
    assert [r["qualified_name"] for r in rows if r["name"] == "wae"] == ["vaezoo:wae"]
    result = clash["clash off sample"]
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert f"needs model 'iaf-vae' from plugin distribution '{DISTRIBUTION}'" in line
    assert f"remove '{DISTRIBUTION}:wae' from VAEZOO_DISABLE_PLUGINS" in line


def test_a_file_whose_distribution_is_missing_names_it_first(clash: dict, cifar: Path, tmp_path: Path) -> None:
    tmp = clash["tmp"]
    clash_model, zoo_model = tmp / "clash" / "model.safetensors", tmp / "zoo-iaf" / "model.safetensors"
    alone = tmp / "alone" / "model.safetensors"
    assert clash_model.is_file() and zoo_model.is_file() and alone.is_file(), clash["clash-iaf alone"].stderr[-3000:]
    with safe_open(alone, "pt") as handle:
        assert json.loads(handle.metadata()["vaezoo.recipe"])["model"]["name"] == "iaf-vae"  # the zoo has one too
    sample, evaluate, sample_alone, zoo = run_cli_batch(  # vaezoo-clash is not installed in this process
        [
            ["sample", str(clash_model), "-n", "4", "--out", str(tmp_path / "s.png")],
            ["eval", str(clash_model), "--data-dir", str(cifar)],
            ["sample", str(alone), "-n", "4", "--out", str(tmp_path / "s.png")],
            ["sample", str(zoo_model), "-n", "4", "--out", str(tmp_path / "z.png")],
        ],
        tmp_path,
    )
    for result in (sample, evaluate, sample_alone):
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = error_lines(result.stderr)
        assert f"needs model 'iaf-vae' from plugin distribution '{DISTRIBUTION}' (version 0.1)" in line
        assert f"`pip install {DISTRIBUTION}`" in line and "flow_steps" not in line
    assert not (tmp_path / "s.png").exists()
    assert zoo.returncode == 0, zoo.stderr[-3000:]
