"""Mixture priors: a learnable mixture of Gaussians (`mog`) and the VampPrior (`vamp`), as a vaezoo plugin."""
