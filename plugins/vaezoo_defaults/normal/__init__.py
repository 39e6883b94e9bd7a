"""The standard normal prior N(0, I), as a vaezoo plugin."""
