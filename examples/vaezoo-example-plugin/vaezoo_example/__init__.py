"""vaezoo-example-plugin: a DCGAN-style encoder/decoder pair, a Laplace-posterior model family, and recipes that
use them."""
