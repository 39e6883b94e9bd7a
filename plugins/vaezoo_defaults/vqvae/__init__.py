"""The `vqvae` model family, as a vaezoo plugin."""
