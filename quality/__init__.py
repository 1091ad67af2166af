"""Quality measurement: the synthetic task suite (synth), tiny-model training (train, data), the pruning benchmark
(eval, metrics, scoring) and importers for public benchmarks (readers, importer). Entry points: `python -m
jobs.synth`, `jobs.train_tiny`, `jobs.eval`, `jobs.import_benchmark`."""
