"""Training and evaluation of pipelines."""
