"""Kubernetes manifests for training (pod, Kubeflow TrainJob) and their validation; plain Python, no Dagster."""
