"""A Dagster-orchestrated LLM fine-tuning pipeline: curated data to a gated, registered model."""
