"""The classic VAE family `vae` (encoder + decoder + prior + loss), as a vaezoo plugin."""
