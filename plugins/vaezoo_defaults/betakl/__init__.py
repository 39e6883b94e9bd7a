"""Beta-VAE loss (BCE + beta * KL with optional linear warm-up), as a vaezoo plugin."""
