"""Registers every recipe of registry.toml."""

import tomllib
from importlib.resources import files

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_recipes(register):
    recipes = tomllib.loads(files("vaezoo_defaults.zoo").joinpath("registry.toml").read_text(encoding="utf-8"))
    for name, table in recipes.items():
        register(name, table)
