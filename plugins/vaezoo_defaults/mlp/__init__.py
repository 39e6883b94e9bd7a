"""Fully connected encoder and decoder for small images, as a vaezoo plugin."""
