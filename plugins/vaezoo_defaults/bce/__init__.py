"""Binary cross-entropy + KL, the classic notebook loss, as a vaezoo plugin."""
