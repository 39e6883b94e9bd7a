"""The notebook's convolutional encoder and decoder, as a vaezoo plugin."""
