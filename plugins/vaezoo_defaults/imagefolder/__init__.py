"""Any folder of images as a dataset, as a vaezoo plugin."""
