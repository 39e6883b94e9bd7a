"""Samplers fitted after training: densities over a trained model's codes."""
