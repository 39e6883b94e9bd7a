"""Experiment loggers: TensorBoard event files in the run folder, and MLflow runs."""
