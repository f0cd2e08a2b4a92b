"""Real-data suite: WebDataset shards built from data that installs from package registries, with
classical baselines and mbp pipelines (``python -m benchmarks.realdata.build``)."""
