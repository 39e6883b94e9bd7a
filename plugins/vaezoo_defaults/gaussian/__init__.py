"""Gaussian likelihood + KL, as a vaezoo plugin."""
