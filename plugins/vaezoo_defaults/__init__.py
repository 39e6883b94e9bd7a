"""vaezoo's default plugins: one import package, one entry point per plugin (each can be disabled by
name with VAEZOO_DISABLE_PLUGINS). Each subpackage's `plugin` module only registers names; the code
behind them (and torch) is imported the first time a recipe uses it."""
