"""Recipes: a registered table or a .toml file resolved against the registry, then built into a model."""
