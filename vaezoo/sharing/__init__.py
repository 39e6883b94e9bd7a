"""Sharing on the Hugging Face Hub: model names, downloads, pushing a run, model cards."""
