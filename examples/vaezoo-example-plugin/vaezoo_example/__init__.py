"""vaezoo-example-plugin: a DCGAN-style encoder/decoder pair and a recipe that uses it."""
