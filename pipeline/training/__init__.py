"""Training workloads. `python -m pipeline.training --spec spec.json` is what a subprocess or a pod runs."""
