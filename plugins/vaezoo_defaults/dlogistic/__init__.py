"""Discretized logistic mixture likelihood (PixelCNN++) + KL, as a vaezoo plugin."""
