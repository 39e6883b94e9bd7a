"""MNIST and Fashion-MNIST from the official IDX files, as a vaezoo plugin."""
