"""The zoo's recipes (registry.toml), as a vaezoo plugin."""
