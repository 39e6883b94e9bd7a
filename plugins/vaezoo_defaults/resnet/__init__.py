"""Residual convolutional encoder and decoder (the quality option), as a vaezoo plugin."""
