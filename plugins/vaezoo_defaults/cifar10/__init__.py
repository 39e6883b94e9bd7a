"""The CIFAR-10 dataset (official batches or class folders), as a vaezoo plugin."""
