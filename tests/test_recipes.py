"""Recipes: precedence of overrides, TOML values of --set, unknown keys, recipe.toml round trips."""

from __future__ import annotations

import tomllib

import pytest

from vaezoo.errors import RecipeError, UnknownName
from vaezoo.recipes.resolve import parse_set, resolve_recipe
from vaezoo.recipes.toml_writer import dumps


def test_precedence_options_over_set_over_recipe_over_defaults():
    base = resolve_recipe("cifar-vae")
    assert base["train"]["epochs"] == 15  # recipe
    assert base["train"]["weight_decay"] == 0.0  # train default
    assert base["dataset"]["download"] is True  # component default
    assert resolve_recipe("cifar-vae", ["train.epochs=3"])["train"]["epochs"] == 3
    assert resolve_recipe("cifar-vae", ["train.epochs=3"], {"train.epochs": 5})["train"]["epochs"] == 5
    assert (
        resolve_recipe("cifar-vae", ["train.epochs=3"], {"train.epochs": None})["train"]["epochs"] == 3
    )  # an option not given
    assert resolve_recipe("cifar-vae", ["latent_dim=7"], {"latent_dim": 9})["latent_dim"] == 9


def test_component_defaults_fill_what_the_recipe_leaves_out():
    table = {
        "name": "mine",
        "latent_dim": 3,
        "dataset": {"name": "cifar10"},
        "encoder": {"name": "conv"},
        "decoder": "conv",
        "prior": {"name": "normal"},
        "loss": {"name": "bce-kl"},
    }
    resolved = resolve_recipe(table)
    assert resolved["encoder"] == {"name": "conv", "hidden": [32, 64, 128]}
    assert resolved["decoder"] == {"name": "conv", "hidden": [128, 64, 32]}
    assert resolve_recipe(table, ["encoder.hidden=[8, 16, 32]"])["encoder"]["hidden"] == [8, 16, 32]


@pytest.mark.parametrize(
    ("item", "value"),
    [
        ("train.epochs=3", 3),
        ("train.lr=1e-2", 0.01),
        ("encoder.hidden=[64,128]", [64, 128]),
        ('train.optimizer="sgd"', "sgd"),
        ("train.optimizer=adamw", "adamw"),  # a bare word is a string
        ("dataset.download=false", False),
        ("train.lr = 0.5", 0.5),
    ],
)
def test_set_values_are_toml(item, value):
    path, parsed = parse_set(item)
    assert parsed == value and type(parsed) is type(value)
    assert path == item.split("=")[0].strip().split(".")


def test_set_values_reach_the_resolved_recipe():
    resolved = resolve_recipe(
        "cifar-vae", ["train.lr=1e-2", "train.optimizer=adamw", "train.epochs=2", "encoder.hidden=[8,16,32]"]
    )
    assert resolved["train"]["lr"] == 0.01 and resolved["train"]["optimizer"] == "adamw"
    assert resolved["train"]["epochs"] == 2 and resolved["encoder"]["hidden"] == [8, 16, 32]
    assert isinstance(resolve_recipe("cifar-vae", ["train.lr=1"])["train"]["lr"], float)  # int -> float is lossless


@pytest.mark.parametrize(
    "item", ["train.epochs", "=3", "train..epochs=3", "encoder.hidden=[1,", "train.optimizer=a b", ".x=1"]
)
def test_bad_set_syntax_is_an_error(item):
    with pytest.raises(RecipeError, match="bad --set"):
        resolve_recipe("cifar-vae", [item])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("bogus=1", "unknown recipe key 'bogus'"),
        ("train.bogus=1", "unknown key train.bogus"),
        ("encoder.bogus=1", "unknown key encoder.bogus"),
        ("prior.scale=2", "unknown key prior.scale"),
        ("train.epochs=1.5", "train.epochs must be int"),
        ("train.epochs=0", "at least 1"),
        ("train.optimizer=rmsprop", "train.optimizer must be one of"),
        ("train.precision=fp8", "train.precision must be one of"),
        ("encoder.latent_dim=3", "set by vaezoo itself"),
        ("encoder.hidden=3", "encoder.hidden must be list"),
        ("train.epochs.x=1", "not a table"),
    ],
)
def test_unknown_keys_and_bad_values_are_errors(item, match):
    with pytest.raises(RecipeError, match=match):
        resolve_recipe("cifar-vae", [item])


def test_setting_a_component_a_recipe_lacks_names_the_family():
    with pytest.raises(RecipeError, match="this recipe has no prior \\(its model family 'hvae' is built without one"):
        resolve_recipe("cifar-hvae", ["prior.name=normal"])


def test_unknown_top_level_key_in_a_table_is_an_error():
    table = {**resolve_recipe("cifar-vae"), "epochs": 3}
    with pytest.raises(RecipeError, match="unknown key 'epochs'"):
        resolve_recipe(table)


def test_unknown_recipe_and_component_names():
    with pytest.raises(UnknownName, match="unknown recipe 'cifar-vea'.*did you mean cifar-vae"):
        resolve_recipe("cifar-vea")
    with pytest.raises(UnknownName, match="unknown encoder 'convv'"):
        resolve_recipe("cifar-vae", ["encoder.name=convv"])


def test_recipe_toml_round_trips(tmp_path):
    resolved = resolve_recipe(
        "cifar-vae",
        ["encoder.hidden=[8,16,32]", "train.lr=0.0003", 'summary="a \\"quoted\\" summary"'],
        {"train.epochs": 2},
    )
    path = tmp_path / "recipe.toml"
    path.write_text(dumps(resolved), encoding="utf-8")
    assert tomllib.loads(path.read_text(encoding="utf-8")) == resolved
    assert resolve_recipe(path) == resolved  # a recipe file is a recipe
    assert resolve_recipe(tomllib.loads(path.read_text(encoding="utf-8"))) == resolved


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        resolve_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid TOML"):
        resolve_recipe(bad)


def test_show_prints_every_recipe_as_toml_that_resolves_to_itself(tmp_path):
    """`vaezoo show RECIPE` is the recipe a run would write as recipe.toml: read back as a recipe file,
    it resolves to exactly the same recipe (every registered recipe, and one with --set applied)."""
    from conftest import run_cli_batch

    from vaezoo.api import show_recipe
    from vaezoo.plugins.manager import get_registry

    for entry in get_registry().list("recipes"):
        shown = show_recipe(entry.name)
        assert resolve_recipe(tomllib.loads(shown)) == resolve_recipe(entry.name), entry.name
    shown, refused = run_cli_batch(
        [
            ["show", "cifar-vae", "--set", "train.epochs=3", "--set", "encoder.hidden=[8,16]"],
            ["show", "cifar-vae", "--set", "nope=1"],
        ],
        tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    table = tomllib.loads(shown.stdout)
    assert table["train"]["epochs"] == 3 and table["encoder"]["hidden"] == [8, 16]
    saved = tmp_path / "mine.toml"
    saved.write_text(shown.stdout.replace('name = "cifar-vae"', 'name = "mine"', 1))
    assert resolve_recipe(saved) == {
        **resolve_recipe("cifar-vae", ["train.epochs=3", "encoder.hidden=[8,16]"]),
        "name": "mine",
    }
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "unknown recipe key 'nope'" in refused.stderr
