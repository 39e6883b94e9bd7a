"""The registry: the kinds of things plugins register, the hooks, the plugin manager and the tables."""
