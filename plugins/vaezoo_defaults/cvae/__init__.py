"""The `cvae` model family, as a vaezoo plugin."""
