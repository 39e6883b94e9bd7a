"""The `hvae` model family, as a vaezoo plugin."""
